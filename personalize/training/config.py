"""How a head is trained: one config per kind of head, and the flat record both become.

    ValueHeadConfig     lora and linear heads: TD(lambda) regression of Q(s, a) on scored rollouts
    ImplicitHeadConfig  implicit heads: a LoRA adapter fine-tuned on the best rollouts (ivg's token level)
    TrainConfig         the flat record of either, which the trainers read and head.json keeps
                        (``training.config``); validated the same way whichever config made it
    TrainReport         what one run measured

Options that only make sense for one kind exist only in that kind's config: an implicit head has
no shaping, discount, value output, budget features or stopping option.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from personalize.errors import ConfigError
from personalize.heads import HEAD_KINDS, HeadKind, check_budget_scales, check_steer

ShapingMode = Literal["none", "token", "sentence"]
SHAPING_MODES: tuple[str, ...] = get_args(ShapingMode)
VALUE_KINDS = ("lora", "linear")


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one head's training run (all recorded in head.json)."""

    kind: HeadKind = "lora"
    epochs: int = 3
    lr: float = 3e-4
    head_lr: float = 2e-3
    batch_size: int = 8
    gamma: float = 1.0
    lam: float = 0.95
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    lora_layers: int = 0
    """Adapt only the top N transformer layers (0: all)."""
    value_rank: int = 16
    budget_scales: tuple[float, ...] = ()
    """Decay lengths (tokens) of the head's remaining-budget features (empty: a budget-blind head)."""
    grad_clip: float = 1.0
    seed: int = 0
    top_fraction: float = 0.5
    """``implicit`` only: keep each prompt's best rollout, then this share of those (the best-scoring)."""
    unfinished_penalty: float = 0.0
    """Subtracted from the reward of every rollout whose response stops mid-sentence, cut by the token
    limit or not (training only: the reward itself, and so the evaluation, is unchanged). A reward's
    own checks may miss some ("... practice. The fir" ends on no joining word); charging each one
    teaches the head to finish its answer within the limit rather than to end where the checks do
    not look (see :func:`personalize.training.shaping.charge_unfinished`)."""
    stop_option: bool = False
    """Value the option to end the answer at every sentence end of the rollouts: ``Q(s, EOS)`` learns
    the reward of the answer ended there, and returns are those of the policy that ends it there when
    that beats the prompt's expected reward (:mod:`personalize.training.stopping`)."""
    steer: str = "all"
    """What the trained head steers at decode time, recorded in ``head.json``: ``all`` top-k candidates,
    or only the end-of-answer tokens (``end``: a stopping head; see :mod:`personalize.heads`)."""

    def __post_init__(self) -> None:
        if self.kind not in HEAD_KINDS:
            raise ConfigError(f"kind must be one of {', '.join(HEAD_KINDS)}, got {self.kind!r}")
        for name in ("epochs", "batch_size", "lora_rank", "value_rank"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.top_fraction <= 1.0:
            raise ConfigError(f"top_fraction must be in (0, 1], got {self.top_fraction}")
        if not 0.0 <= self.lam <= 1.0 or not 0.0 < self.gamma <= 1.0:
            raise ConfigError(f"need 0 <= lam <= 1 and 0 < gamma <= 1, got lam={self.lam}, gamma={self.gamma}")
        if self.lr <= 0 or self.head_lr <= 0:
            raise ConfigError("learning rates must be > 0")
        if not 0.0 <= self.unfinished_penalty <= 2.0:
            raise ConfigError(f"unfinished_penalty must be in [0, 2] (reward units), got {self.unfinished_penalty}")
        check_budget_scales(self.budget_scales, ConfigError)
        if self.budget_scales and self.kind == "implicit":
            raise ConfigError("budget features belong to value heads (lora, linear), not implicit heads")
        if self.stop_option and self.kind == "implicit":
            raise ConfigError("the stopping option trains value heads (lora, linear), not implicit heads")
        check_steer(self.steer, ConfigError)


@dataclass(frozen=True)
class ValueHeadConfig:
    """A ``lora`` head (its own adapter and decode row) or a ``linear`` one (free at decode time)."""

    kind: Literal["lora", "linear"] = "lora"
    epochs: int = 3
    lr: float = 3e-4
    """Learning rate of the LoRA adapter."""
    head_lr: float = 2e-3
    """Learning rate of the value output."""
    batch_size: int = 8
    gamma: float = 1.0
    lam: float = 0.95
    """TD(lambda)'s lambda."""
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    lora_layers: int = 0
    """Adapt only the top N transformer layers (0: all)."""
    value_rank: int = 16
    budget_scales: tuple[float, ...] = ()
    grad_clip: float = 1.0
    seed: int = 0
    unfinished_penalty: float = 0.0
    stop_option: bool = False
    steer: str = "all"
    shaping: ShapingMode = "none"
    """Reward per action: ``none`` (the final reward on the last action), ``sentence`` (the change in the
    reward of the text so far at each sentence or line end) or ``token`` (at every token)."""

    def __post_init__(self) -> None:
        if self.kind not in VALUE_KINDS:
            raise ConfigError(f"a value head's kind must be one of {', '.join(VALUE_KINDS)}, got {self.kind!r}")
        if self.shaping not in SHAPING_MODES:
            raise ConfigError(f"shaping (--shaping) must be one of {', '.join(SHAPING_MODES)}, got {self.shaping!r}")
        self.train_config()  # validates every shared bound with the same messages

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            kind=self.kind,
            epochs=self.epochs,
            lr=self.lr,
            head_lr=self.head_lr,
            batch_size=self.batch_size,
            gamma=self.gamma,
            lam=self.lam,
            lora_rank=self.lora_rank,
            lora_alpha=self.lora_alpha,
            lora_targets=tuple(self.lora_targets),
            lora_layers=self.lora_layers,
            value_rank=self.value_rank,
            budget_scales=tuple(self.budget_scales),
            grad_clip=self.grad_clip,
            seed=self.seed,
            unfinished_penalty=self.unfinished_penalty,
            stop_option=self.stop_option,
            steer=self.steer,
        )


@dataclass(frozen=True)
class ImplicitHeadConfig:
    """An ``implicit`` head: rejection-sampling fine-tuning of a LoRA adapter on the best rollouts."""

    epochs: int = 3
    lr: float = 3e-4
    batch_size: int = 8
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    lora_layers: int = 0
    grad_clip: float = 1.0
    seed: int = 0
    top_fraction: float = 0.5
    """Keep each prompt's best rollout, then this share of those (the best-scoring)."""
    unfinished_penalty: float = 0.0
    kind: Literal["implicit"] = field(default="implicit", init=False)

    def __post_init__(self) -> None:
        self.train_config()

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            kind="implicit",
            epochs=self.epochs,
            lr=self.lr,
            batch_size=self.batch_size,
            lora_rank=self.lora_rank,
            lora_alpha=self.lora_alpha,
            lora_targets=tuple(self.lora_targets),
            lora_layers=self.lora_layers,
            grad_clip=self.grad_clip,
            seed=self.seed,
            top_fraction=self.top_fraction,
            unfinished_penalty=self.unfinished_penalty,
        )


HeadConfig = ValueHeadConfig | ImplicitHeadConfig

_VALUE_ONLY = {
    "shaping": "shaping (--shaping) applies to value heads (lora, linear); implicit heads are fine-tuned",
    "stop_option": "the stopping option trains value heads (lora, linear), not implicit heads",
    "budget_scales": "budget features belong to value heads (lora, linear), not implicit heads",
}


def head_config(kind: str, **options: object) -> HeadConfig:
    """The config of a ``kind`` head from flat options (as a command line gives them): an option of the
    other kind left at its default is dropped, one set to anything else is an error naming it."""
    if kind in VALUE_KINDS:
        value_fields = set(ValueHeadConfig.__dataclass_fields__)
        return ValueHeadConfig(kind=kind, **{k: v for k, v in options.items() if k in value_fields})  # type: ignore[arg-type]
    if kind != "implicit":
        raise ConfigError(f"kind must be one of {', '.join(HEAD_KINDS)}, got {kind!r}")
    defaults = ValueHeadConfig()
    for name, value in options.items():
        if name in ImplicitHeadConfig.__dataclass_fields__ or getattr(defaults, name, value) == value:
            continue
        raise ConfigError(_VALUE_ONLY.get(name, f"{name} applies to value heads (lora, linear), not implicit heads"))
    implicit_fields = set(ImplicitHeadConfig.__dataclass_fields__) - {"kind"}
    return ImplicitHeadConfig(**{k: v for k, v in options.items() if k in implicit_fields})  # type: ignore[arg-type]


@dataclass
class TrainReport:
    epoch_losses: list[float] = field(default_factory=list)
    return_mean: float = 0.0
    return_std: float = 1.0
    scale: float = 1.0
    seconds: float = 0.0
    rollouts: int = 0
    stopping: dict[str, float] = field(default_factory=dict)
    """With the stopping option: how many sentence ends it values, how many the rule stops at, and the
    mean reward of the rollouts against that of the stopping rule applied to them."""
