"""Value heads: one per objective, a few MB each.

A head estimates ``Q(s, a)`` — the expected final reward of appending token ``a``
to prefix ``s`` — for every vocabulary token in one forward pass:

    Q(s, a) = v · h + E[a] · U(D h) + b

``h`` is the final hidden state of the head's row, ``E`` the backbone's frozen
output embedding, ``D`` (H→r) and ``U`` (r→H) a small low-rank map, ``v`` a
state-value vector and ``b`` a bias. ``v·h + b`` is the same for every candidate
token, so it cancels when the decoder centres values over the top-k; it is kept
because training regresses absolute returns.

A *budget-aware* head (``budget_scales`` in ``head.json``) also sees how many
tokens the response may still take after ``a`` (``n`` = max_new_tokens minus the
tokens so far, ``a`` included), through features ``φ_k(n) = exp(-n / τ_k)``:

    Q(s, a, n) = v · h + E[a] · (U(D h) + Σ_k φ_k(n) c_k) + b + Σ_k φ_k(n) b_k

A response cut by the token limit is scored as cut; a value that knows the limit
is near can prefer tokens that end the answer well. Far from the limit every
``φ_k`` is about 0 and the head is the plain one; where the budget is unknown
(``remaining=None``) it is taken as unlimited.

What a head steers (``steer`` in ``head.json``): ``all`` (default) pushes every
candidate of the base top-k by its centred value; ``end`` makes it a *stopping*
head, which only decides when the answer ends: the model's end-of-answer tokens
get ``Q(s, end) − V_go_on(s)``, with ``V_go_on`` the base-probability-weighted
value of the other top-k candidates, and every other candidate is left as the
base model has it. What the answer says is the base model's; where it ends is
the head's.

Three kinds:
- ``lora``: the row runs the backbone with the head's LoRA adapter (one extra
  batch row per request at decode time; steers well at high beta).
- ``linear``: reads the base row's hidden state (no adapter, no extra row: free
  at decode time, but weaker).
- ``implicit``: a LoRA adapter only, trained to BE the tuned policy (e.g. fine-tuned
  on the best rollouts for an objective). Its value is implicit:
  ``log pi_tuned(a|s) − log pi_base(a|s)``, read from its row's and the base row's
  LM-head scores in the same forward (IVG's token-level guidance). No value output;
  its calibration scale is 1 (log-probability units: beta · w = 1 over the top-k
  samples the tuned policy itself).

On disk a head is a directory: ``head.json`` (metadata), ``value_head.safetensors``
(not for ``implicit``) and, for ``lora``/``implicit``, ``adapter_model.safetensors`` +
``adapter_config.json`` in peft's format. Only safetensors are read; any
pickle-capable file is refused.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from personalize.errors import (
    BackboneMismatchError,
    HeadFormatError,
    TokenizerMismatchError,
    UnsafeArtifactError,
)
from personalize.head_checks import check_adapter_file, check_finite, check_meta_sizes, check_value_file
from personalize.lora import PEFT_PREFIX, LoraSpec, adapter_pairs
from personalize.models import BaseModel

HeadKind = Literal["lora", "linear", "implicit"]
HEAD_KINDS: tuple[str, ...] = ("lora", "linear", "implicit")
ADAPTER_KINDS: tuple[str, ...] = ("lora", "implicit")
STEER_MODES: tuple[str, ...] = ("all", "end")
"""What a head's values push: every top-k candidate, or only the end-of-answer tokens (module docstring)."""
"""Kinds that carry a LoRA adapter (and take one batch row at decode time)."""
HEAD_JSON = "head.json"
VALUE_FILE = "value_head.safetensors"
ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ALLOWED_FILES = frozenset({HEAD_JSON, VALUE_FILE, ADAPTER_FILE, ADAPTER_CONFIG, "README.md"})
UNSAFE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz"})
MAX_HEAD_BYTES = 10 * 1024 * 1024
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
FORMAT_VERSION = 1
SHIPPED_HEADS_DIR = Path(__file__).parent / "shipped_heads"
"""Demo heads for the embedded base model, installed with the package."""


MAX_BUDGET_FEATURES = 8


def check_budget_scales(scales: tuple[float, ...], error: type[Exception]) -> None:
    """Budget decay lengths must be at most 8 finite numbers > 0 (raises ``error`` otherwise)."""
    if len(scales) > MAX_BUDGET_FEATURES:
        raise error(f"budget_scales: at most {MAX_BUDGET_FEATURES} decay lengths, got {len(scales)}")
    for value in scales:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            raise error(f"budget_scales must be finite numbers of tokens > 0, got {value!r}")


def budget_features(remaining: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``φ_k(n) = exp(-n / τ_k)`` (a negative ``n`` counts as 0): remaining (...) tokens, scales (..., K) or (K,)
    -> (..., K) float32. Shared by the head's own forward (training) and the decoder's stacked heads."""
    return torch.exp(-remaining.float().clamp_min(0).unsqueeze(-1) / scales)


def check_steer(mode: str, error: type[Exception]) -> None:
    """A head's steer mode must be one of :data:`STEER_MODES` (raises ``error`` otherwise)."""
    if mode not in STEER_MODES:
        raise error(f"steer must be one of {', '.join(STEER_MODES)}, got {mode!r}")


def check_objective_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise HeadFormatError(
            f"objective name must match {NAME_PATTERN.pattern} (lowercase letters, digits, '_' or '-'), got {name!r}"
        )
    return name


@dataclass(frozen=True)
class Calibration:
    """Return statistics from training; ``scale`` divides centred values so weight 1.0 means the same strength."""

    return_mean: float = 0.0
    return_std: float = 1.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        for name in ("return_mean", "return_std", "scale"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise HeadFormatError(f"calibration.{name} must be a finite number, got {value!r}")
        if self.scale <= 0:
            raise HeadFormatError(f"calibration.scale must be > 0, got {self.scale}")


@dataclass(frozen=True)
class HeadMeta:
    """Everything ``head.json`` records about a head."""

    objective: str
    version: str
    kind: HeadKind
    backbone_id: str
    tokenizer_hash: str
    hidden_size: int
    value_rank: int
    description: str = ""
    reward: str = ""
    calibration: Calibration = field(default_factory=Calibration)
    lora: LoraSpec | None = None
    training: Mapping[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    budget_scales: tuple[float, ...] = ()
    """Decay lengths (tokens) of the remaining-budget features; empty: the head ignores the budget."""
    steer: str = "all"
    """``all``: the head pushes every top-k candidate; ``end``: only the end-of-answer tokens (a stopping head)."""

    @property
    def reward_name(self) -> str:
        """The reward function the head was trained on: ``reward``, else the objective's own name."""
        return self.reward or self.objective

    def __post_init__(self) -> None:
        check_objective_name(self.objective)
        if self.kind not in HEAD_KINDS:
            raise HeadFormatError(f"kind must be one of {', '.join(HEAD_KINDS)}, got {self.kind!r}")
        adapted = self.kind in ADAPTER_KINDS
        if adapted != (self.lora is not None):
            raise HeadFormatError(f"a {self.kind!r} head {'needs' if adapted else 'has no'} a lora spec")
        if self.kind == "implicit" and self.value_rank != 0:
            raise HeadFormatError(f"an 'implicit' head has no value output (value_rank 0), got {self.value_rank}")
        if not self.version or "/" in self.version or ".." in self.version:
            raise HeadFormatError(f"version must be a plain non-empty string, got {self.version!r}")
        check_budget_scales(self.budget_scales, HeadFormatError)
        check_steer(self.steer, HeadFormatError)
        if self.budget_scales and self.kind == "implicit":
            raise HeadFormatError("an 'implicit' head has no value output to make budget-aware")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.lora is not None:
            data["lora"]["target_modules"] = list(self.lora.target_modules)
        data["training"] = dict(self.training)
        data["budget_scales"] = list(self.budget_scales)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HeadMeta:
        try:
            fields = dict(data)
            fields["calibration"] = Calibration(**fields.get("calibration", {}))
            fields["budget_scales"] = tuple(float(x) for x in fields.get("budget_scales", ()))
            lora = fields.get("lora")
            if lora is not None:
                fields["lora"] = LoraSpec(
                    rank=int(lora["rank"]), alpha=float(lora["alpha"]), target_modules=tuple(lora["target_modules"])
                )
            return cls(**fields)
        except (TypeError, KeyError, ValueError) as exc:
            raise HeadFormatError(f"malformed {HEAD_JSON}: {exc}") from exc


class TokenValueOutput(nn.Module):
    """``Q(s, ·)`` for every token from one hidden state, via the frozen output embedding."""

    def __init__(
        self, hidden_size: int, rank: int = 16, init_bias: float = 0.0, budget_scales: tuple[float, ...] = ()
    ) -> None:
        super().__init__()
        with warnings.catch_warnings():  # rank 0 (implicit heads): torch warns that empty weights need no init
            warnings.filterwarnings("ignore", "Initializing zero-element tensors", UserWarning)
            self.down = nn.Linear(hidden_size, rank, bias=False)  # D: H -> r
            self.up = nn.Linear(rank, hidden_size, bias=False)  # U: r -> H, zero-init: Q starts flat
        self.state = nn.Linear(hidden_size, 1, bias=False)  # v, zero-init
        self.bias = nn.Parameter(torch.tensor(float(init_bias)))
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.state.weight)
        self.budget_scales = tuple(float(x) for x in budget_scales)
        if self.budget_scales:  # zero-init: a fresh budget-aware head values every budget alike
            self.budget_dir = nn.Parameter(torch.zeros(len(self.budget_scales), hidden_size))  # c_k (K, H)
            self.budget_bias = nn.Parameter(torch.zeros(len(self.budget_scales)))  # b_k (K,)

    def budget_features(self, remaining: torch.Tensor) -> torch.Tensor:
        """This head's ``φ_k(n)``: remaining (...) tokens -> (..., K) float32."""
        return budget_features(remaining, torch.tensor(self.budget_scales, device=remaining.device))

    def direction(self, hidden: torch.Tensor, remaining: torch.Tensor | None = None) -> torch.Tensor:
        """``U(D h) + Σ_k φ_k(n) c_k``: the vector whose dot product with ``E[a]`` gives a's relative value.

        hidden (..., H), remaining (...) tokens left after ``a`` (None: unlimited) -> (..., H).
        """
        direction = self.up(self.down(hidden))  # (..., H)
        if self.budget_scales and remaining is not None:
            direction = direction + self.budget_features(remaining) @ self.budget_dir  # (..., H)
        return direction

    def state_value(self, hidden: torch.Tensor, remaining: torch.Tensor | None = None) -> torch.Tensor:
        """``v·h + b + Σ_k φ_k(n) b_k``, the part of Q shared by every token: (..., H) -> (...)."""
        value = self.state(hidden).squeeze(-1) + self.bias  # (...)
        if self.budget_scales and remaining is not None:
            value = value + self.budget_features(remaining) @ self.budget_bias  # (...)
        return value

    def forward(
        self, hidden: torch.Tensor, embedding: torch.Tensor, remaining: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Absolute ``Q(s, a)`` for all ``a``: hidden (..., H), embedding (V, H) -> (..., V)."""
        relative = self.direction(hidden, remaining) @ embedding.T  # (..., V)
        return relative + self.state_value(hidden, remaining).unsqueeze(-1)  # (..., V)

    def load_plain(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load a value output's tensors; a head without budget features warm-starts this one's at zero."""
        missing = set(self.state_dict()) - set(state)
        if missing - {"budget_dir", "budget_bias"}:
            raise HeadFormatError(f"value output lacks {sorted(missing)}")
        self.load_state_dict(dict(state), strict=not missing)


@dataclass
class ValueHead:
    """A loaded head: metadata, value output and (for ``lora``) peft-format adapter tensors."""

    meta: HeadMeta
    output: TokenValueOutput
    adapter: dict[str, torch.Tensor] | None = None

    @property
    def objective(self) -> str:
        return self.meta.objective

    def adapter_pairs(self, module_names: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        if self.meta.lora is None or self.adapter is None:
            return {}
        return adapter_pairs(self.adapter, self.meta.lora, module_names)


def linear_layers(model: nn.Module) -> dict[str, nn.Linear]:
    """The model's linear layers by name."""
    return {name: module for name, module in model.named_modules() if isinstance(module, nn.Linear)}


def new_head(
    base: BaseModel,
    objective: str,
    *,
    kind: HeadKind = "lora",
    version: str = "1",
    value_rank: int = 16,
    lora: LoraSpec | None = None,
    description: str = "",
    reward: str = "",
    init_bias: float = 0.0,
    seed: int = 0,
    budget_scales: tuple[float, ...] = (),
    steer: str = "all",
) -> ValueHead:
    """A fresh head for ``base``: zero-initialised outputs (and LoRA B), so it starts neutral."""
    if kind in ADAPTER_KINDS and lora is None:
        lora = LoraSpec(rank=8, alpha=16.0, target_modules=("q_proj", "v_proj"))
    if kind == "linear":
        lora = None
    if kind == "implicit":
        value_rank = 0
    meta = HeadMeta(
        objective=objective,
        version=version,
        kind=kind,
        backbone_id=base.backbone_id,
        tokenizer_hash=base.tokenizer_hash,
        hidden_size=base.hidden_size,
        value_rank=value_rank,
        description=description,
        reward=reward,
        lora=lora,
        budget_scales=tuple(budget_scales),
        steer=steer,
    )
    gen = torch.Generator().manual_seed(seed)
    output = TokenValueOutput(base.hidden_size, value_rank, init_bias, meta.budget_scales)
    with torch.no_grad():
        output.down.weight.copy_(torch.randn(output.down.weight.shape, generator=gen) / math.sqrt(base.hidden_size))
    adapter = None
    if lora is not None:
        adapter = {}
        for name, module in linear_layers(base.model).items():
            if name.rsplit(".", 1)[-1] in lora.target_modules:
                a = torch.randn(lora.rank, module.in_features, generator=gen) / math.sqrt(module.in_features)
                adapter[f"{PEFT_PREFIX}{name}.lora_A.weight"] = a
                adapter[f"{PEFT_PREFIX}{name}.lora_B.weight"] = torch.zeros(module.out_features, lora.rank)
        if not adapter:
            raise HeadFormatError(f"backbone has no linear layers named {lora.target_modules}")
    return ValueHead(meta, output, adapter)


def save_head(head: ValueHead, directory: Path) -> Path:
    """Write a head directory (safetensors + JSON only)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if head.meta.kind != "implicit":
        tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in head.output.state_dict().items()}
        save_file(tensors, str(directory / VALUE_FILE), metadata={"format": "pt"})
    if head.adapter is not None and head.meta.lora is not None:
        adapter = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in head.adapter.items()}
        save_file(adapter, str(directory / ADAPTER_FILE), metadata={"format": "pt"})
        spec = head.meta.lora
        config = {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": head.meta.backbone_id,
            "r": spec.rank,
            "lora_alpha": spec.alpha,
            "lora_dropout": 0.0,
            "target_modules": list(spec.target_modules),
            "bias": "none",
            "fan_in_fan_out": False,
            "inference_mode": True,
        }
        (directory / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
    (directory / HEAD_JSON).write_text(json.dumps(head.meta.to_json(), indent=2, sort_keys=True))
    return directory


def check_artifact_files(directory: Path) -> None:
    """Refuse pickle-capable files, unexpected files, links escaping the folder and oversize heads."""
    directory = Path(directory)
    if not directory.is_dir():
        raise HeadFormatError(f"head directory {directory} does not exist")
    total = 0
    root = directory.resolve()
    for path in directory.iterdir():
        if path.suffix.lower() in UNSAFE_SUFFIXES:
            raise UnsafeArtifactError(
                f"{path.name}: pickle-capable files are never loaded; heads must be safetensors + JSON "
                f"(allowed files: {', '.join(sorted(ALLOWED_FILES))})"
            )
        if path.name not in ALLOWED_FILES:
            raise HeadFormatError(f"unexpected file {path.name!r} in head; allowed: {', '.join(sorted(ALLOWED_FILES))}")
        if path.is_symlink() or not path.resolve().is_relative_to(root) or not path.is_file():
            raise UnsafeArtifactError(f"{path.name} must be a regular file inside the head directory")
        total += path.stat().st_size
    if total > MAX_HEAD_BYTES:
        raise HeadFormatError(f"head is {total / 2**20:.1f} MiB; the limit is {MAX_HEAD_BYTES / 2**20:.0f} MiB")


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise HeadFormatError(f"missing {path.name}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise HeadFormatError(f"{path.name} is not a valid safetensors file: {exc}") from exc


def _check_files_before_loading(directory: Path, meta: HeadMeta, base: BaseModel | None) -> None:
    """Sizes and weight-file headers against the metadata (and ``base``), before any allocation."""
    check_meta_sizes(meta, base.hidden_size if base is not None else None)
    if meta.kind != "implicit":
        check_value_file(directory / VALUE_FILE, meta)
    if meta.kind in ADAPTER_KINDS:
        layers = None
        if base is not None:
            layers = {name: (m.in_features, m.out_features) for name, m in linear_layers(base.model).items()}
        check_adapter_file(directory / ADAPTER_FILE, meta, layers)


def load_head(directory: Path, base: BaseModel | None = None) -> ValueHead:
    """Load and validate a head directory; with ``base``, also check it fits that backbone."""
    directory = Path(directory)
    check_artifact_files(directory)
    try:
        meta = HeadMeta.from_json(json.loads((directory / HEAD_JSON).read_text()))
    except FileNotFoundError as exc:
        raise HeadFormatError(f"{directory} has no {HEAD_JSON}") from exc
    except json.JSONDecodeError as exc:
        raise HeadFormatError(f"{HEAD_JSON} is not valid JSON: {exc}") from exc
    if meta.format_version != FORMAT_VERSION:
        raise HeadFormatError(f"head format {meta.format_version} is not supported (expected {FORMAT_VERSION})")
    _check_files_before_loading(directory, meta, base)
    output = TokenValueOutput(meta.hidden_size, meta.value_rank, budget_scales=meta.budget_scales)
    if meta.kind != "implicit":  # an implicit head's value comes from its adapter: its output stays zero
        state = _load_tensors(directory / VALUE_FILE)
        check_finite(state, VALUE_FILE)
        output.load_state_dict(state)
    output.requires_grad_(False)
    adapter = _load_tensors(directory / ADAPTER_FILE) if meta.kind in ADAPTER_KINDS else None
    if adapter is not None:
        check_finite(adapter, ADAPTER_FILE)
    head = ValueHead(meta, output, adapter)
    if base is not None:
        check_compatible(head, base)
    return head


def check_compatible(head: ValueHead, base: BaseModel) -> None:
    """Refuse a head trained on another backbone, tokenizer, or shape."""
    meta = head.meta
    if meta.backbone_id != base.backbone_id:
        raise BackboneMismatchError(
            f"head {meta.objective!r} v{meta.version} was trained on backbone {meta.backbone_id!r}, "
            f"but the loaded base model is {base.backbone_id!r}"
        )
    if meta.tokenizer_hash != base.tokenizer_hash:
        raise TokenizerMismatchError(
            f"head {meta.objective!r} v{meta.version} expects tokenizer {meta.tokenizer_hash[:12]}…, "
            f"the base model's is {base.tokenizer_hash[:12]}…"
        )
    if meta.hidden_size != base.hidden_size:
        raise HeadFormatError(f"head hidden size {meta.hidden_size} != backbone hidden size {base.hidden_size}")
    if head.adapter is not None:
        shapes = linear_layers(base.model)
        for module, (a, b) in head.adapter_pairs(list(shapes)).items():
            linear = shapes[module]
            if a.shape[1] != linear.in_features or b.shape[0] != linear.out_features:
                raise HeadFormatError(
                    f"adapter for {module} has shapes {tuple(a.shape)}/{tuple(b.shape)}, "
                    f"layer is {linear.in_features}->{linear.out_features}"
                )


def discover_heads(folders: list[Path]) -> list[Path]:
    """Head directories (holding a head.json) directly in each folder, or the folder itself."""
    found: list[Path] = []
    for folder in folders:
        folder = Path(folder)
        if (folder / HEAD_JSON).is_file():
            found.append(folder)
        elif folder.is_dir():
            found.extend(sorted(p for p in folder.iterdir() if (p / HEAD_JSON).is_file()))
    return found
