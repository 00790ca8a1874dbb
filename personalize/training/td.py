"""TD(lambda) regression of a token-value head on scored rollouts (DESIGN.md §1, Training).

For every response token ``a_t`` the head's ``Q(s_t, a_t)`` regresses onto the
lambda-return ``G_t`` (reward at the last response token, 0 elsewhere, or shaped per
prefix: :mod:`personalize.training.shaping`). LoRA
heads train a peft adapter on a private copy of the backbone plus the value
output; linear heads train the value output on the frozen base hidden states.
Runs on the CPU, one GPU, or several through ``accelerate launch``.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from personalize.errors import ConfigError
from personalize.heads import (
    HEAD_KINDS,
    Calibration,
    HeadKind,
    ValueHead,
    check_budget_scales,
    check_steer,
    load_head,
    new_head,
    save_head,
)
from personalize.lora import PEFT_PREFIX, LoraSpec
from personalize.models import BaseModel
from personalize.training.returns import lambda_returns
from personalize.training.rollouts import Rollout, actions
from personalize.training.shaping import charge_unfinished, sparse_rewards
from personalize.training.stopping import StopTargets, stop_targets


def checkpoint_dir(out_dir: Path) -> Path:
    """Where per-epoch checkpoints live: beside the head folder, removed once training completes."""
    return out_dir.with_name(out_dir.name + ".checkpoint")


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


@dataclass(frozen=True)
class _Batch:
    input_ids: torch.Tensor  # (B, L) right-padded prompt + response
    attention: torch.Tensor  # (B, L)
    positions: torch.Tensor  # (B, T) index of the hidden state that predicts response token t
    actions: torch.Tensor  # (B, T) response token ids
    mask: torch.Tensor  # (B, T)
    rewards: torch.Tensor  # (B, T) each action's reward (the final reward on the last one, unless shaped)
    remaining: torch.Tensor  # (B, T) tokens the response may still take after each action (horizon - t - 1)
    ends: torch.Tensor  # (B, T) 1 at the states where ending the answer has a known return (sentence ends)
    end_returns: torch.Tensor  # (B, T) that return
    stops: torch.Tensor  # (B, T) 1 where the stopping rule ends the answer (a subset of ends)


def _collate(
    rollouts: Sequence[Rollout],
    action_rewards: Sequence[Sequence[float]],
    pad_id: int,
    eos: int,
    horizon: int | None = None,
    stopping: tuple[Sequence[Mapping[int, float]], Sequence[frozenset[int]]] | None = None,
) -> _Batch:
    """Prompt + response ids and, per action (the response's tokens, EOS included when it stopped on
    its own), the index of the hidden state it was chosen at, the reward it was paid and the tokens
    left after it under the rollouts' token limit ``horizon`` (None: unlimited); with ``stopping``
    (per rollout: the return of ending at each state that can end, and where the rule ends), those."""
    chosen = [actions(r, eos) for r in rollouts]
    B = len(rollouts)
    L = max(len(r.prompt_ids) + len(r.response_ids) for r in rollouts)
    T = max(max(len(a) for a in chosen), 1)
    if horizon is not None and horizon < T:
        raise ConfigError(f"a rollout has {T} actions, more than its token limit of {horizon}")
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    attention = torch.zeros(B, L, dtype=torch.long)
    positions = torch.zeros(B, T, dtype=torch.long)
    taken = torch.zeros(B, T, dtype=torch.long)
    mask = torch.zeros(B, T)
    rewards = torch.zeros(B, T)
    ends, end_returns, stops = torch.zeros(B, T), torch.zeros(B, T), torch.zeros(B, T)
    left = horizon - 1 - torch.arange(T) if horizon is not None else torch.full((T,), float(2**20))  # (T,)
    remaining = left.float().expand(B, T).contiguous()  # (B, T)
    for b, (r, acts, paid) in enumerate(zip(rollouts, chosen, action_rewards, strict=True)):
        seq = list(r.prompt_ids) + list(r.response_ids)  # EOS needs no input position: nothing follows it
        P, n = len(r.prompt_ids), len(acts)
        if len(paid) != n:
            raise ConfigError(f"rollout {b}: {len(paid)} action rewards for {n} actions")
        ids[b, : len(seq)] = torch.tensor(seq)
        attention[b, : len(seq)] = 1
        if n == 0:
            continue
        positions[b, :n] = torch.arange(P - 1, P - 1 + n)
        taken[b, :n] = torch.tensor(acts)
        mask[b, :n] = 1.0
        rewards[b, :n] = torch.tensor(list(paid), dtype=torch.float32)
        if stopping is not None:
            for j, value in stopping[0][b].items():
                ends[b, j], end_returns[b, j] = 1.0, value
            for j in stopping[1][b]:
                stops[b, j] = 1.0
    return _Batch(ids, attention, positions, taken, mask, rewards, remaining, ends, end_returns, stops)


class _Trainable(nn.Module):
    """The backbone copy (with a peft LoRA for lora heads) and the head's value output."""

    def __init__(self, base: BaseModel, head: ValueHead, config: TrainConfig) -> None:
        super().__init__()
        self.output = head.output
        self.kind = config.kind
        self.embedding: torch.Tensor
        self.register_buffer("embedding", base.model.get_output_embeddings().weight.detach().float(), persistent=False)
        self.end_ids: torch.Tensor  # every token that ends a response: the stopping option values them all
        self.register_buffer("end_ids", torch.tensor(base.eos_token_ids, dtype=torch.long), persistent=False)
        if config.kind == "lora":
            self.peft = peft_copy(base, config, head.adapter)
            inner: Any = self.peft.get_base_model()
            self.decoder: nn.Module = inner.get_decoder()
        else:
            self.decoder = base.model.get_decoder()

    def forward(self, batch: _Batch) -> tuple[torch.Tensor, torch.Tensor]:
        return self.q_values(batch)

    def q_values(self, batch: _Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``Q(s_t, a_t)`` for every response token (B, T), and ``Q(s_t, end)`` for each token that
        ends a response (B, T, E)."""
        grad = self.kind == "lora"
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            hidden = self.decoder(input_ids=batch.input_ids, attention_mask=batch.attention).last_hidden_state
        hidden = hidden.float()  # (B, L, H)
        H = hidden.shape[-1]
        h = hidden.gather(1, batch.positions.unsqueeze(-1).expand(-1, -1, H))  # (B, T, H)
        direction = self.output.direction(h, batch.remaining)  # (B, T, H)
        taken = self.embedding[batch.actions]  # (B, T, H)
        state = self.output.state_value(h, batch.remaining)  # (B, T)
        end = direction @ self.embedding[self.end_ids].T + state.unsqueeze(-1)  # (B, T, E)
        return (direction * taken).sum(-1) + state, end

    def adapter_state(self) -> dict[str, torch.Tensor] | None:
        return adapter_state(self.peft) if self.kind == "lora" else None


def peft_copy(base: BaseModel, config: TrainConfig, adapter: dict[str, torch.Tensor] | None = None) -> Any:
    """A float32 copy of the backbone with a fresh (B = 0) peft LoRA, or ``adapter`` loaded into it."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    layers = int(base.model.config.num_hidden_layers)
    transform = list(range(layers - config.lora_layers, layers)) if config.lora_layers else None
    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,  # type: ignore[arg-type]  # peft accepts floats
        target_modules=list(config.lora_targets),
        lora_dropout=0.0,
        bias="none",
        layers_to_transform=transform,
    )
    model = copy.deepcopy(base.model).float()
    model.requires_grad_(False)
    peft_model = get_peft_model(model, lora)
    if adapter is not None:  # resume or warm start: keys are in peft's on-disk format, prefix included
        result: Any = set_peft_model_state_dict(peft_model, dict(adapter))
        unexpected = list(result.unexpected_keys)
        if unexpected:  # peft ignores them silently: the adapter would stay at zero
            raise ConfigError(
                f"adapter does not fit this LoRA configuration: {len(unexpected)} unexpected keys, e.g. {unexpected[0]}"
            )
    return peft_model


def adapter_state(peft_model: Any) -> dict[str, torch.Tensor]:
    """The trained adapter in peft's on-disk key format."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(peft_model)
    return {PEFT_PREFIX + k.removeprefix("base_model.model."): v.detach().cpu() for k, v in state.items()}


def _calibration_scale(base: BaseModel, trainable: _Trainable, batch: _Batch, top_k: int = 20) -> float:
    """Mean std of the head's relative values over the base top-k: z / scale has unit spread."""
    with torch.no_grad():
        if trainable.kind == "lora":
            with trainable.peft.disable_adapter():
                base_hidden = trainable.decoder(input_ids=batch.input_ids, attention_mask=batch.attention)
        else:
            base_hidden = trainable.decoder(input_ids=batch.input_ids, attention_mask=batch.attention)
        head_hidden = trainable.decoder(input_ids=batch.input_ids, attention_mask=batch.attention).last_hidden_state
        H = head_hidden.shape[-1]
        pos = batch.positions.unsqueeze(-1).expand(-1, -1, H)
        logits = base.model.get_output_embeddings()(base_hidden.last_hidden_state.gather(1, pos)).float()  # (B,T,V)
        top = logits.topk(top_k, dim=-1).indices  # (B, T, C)
        direction = trainable.output.direction(head_hidden.float().gather(1, pos), batch.remaining)  # (B, T, H)
        rel = torch.einsum("btch,bth->btc", trainable.embedding[top], direction)  # (B, T, C)
        spread = rel.std(dim=-1)[batch.mask.bool()]  # (positions,)
    value = float(spread.mean()) if spread.numel() else 0.0
    return value if math.isfinite(value) and value > 1e-6 else 1.0


def _scale(
    base: BaseModel,
    model: _Trainable,
    rollouts: Sequence[Rollout],
    paid: Sequence[Sequence[float]],
    order: Sequence[int],
    device: torch.device,
    horizon: int | None,
) -> float:
    """The calibration scale on the first 16 rollouts of the training order, in chunks (logits over V are large)."""
    pad, eos = base.pad_token_id, base.eos_token_ids[0]
    spreads = []
    for i in range(0, min(16, len(order)), 4):
        idx = order[i : i + 4]
        calib = _collate([rollouts[j] for j in idx], [paid[j] for j in idx], pad, eos, horizon)
        spreads.append(_calibration_scale(base, model, _Batch(*(t.to(device) for t in asdict_shallow(calib)))))
    return sum(spreads) / len(spreads)


def train_head(
    base: BaseModel,
    rollouts: Sequence[Rollout],
    scores: Sequence[float],
    objective: str,
    out_dir: Path,
    *,
    reward_name: str,
    config: TrainConfig = TrainConfig(),
    description: str = "",
    version: str = "1",
    extra_meta: dict[str, Any] | None = None,
    resume: bool = True,
    on_step: Callable[[int, int, float], None] | None = None,
    action_rewards: Sequence[Sequence[float]] | None = None,
    init: ValueHead | None = None,
    horizon: int | None = None,
    stop_rewards: Sequence[Mapping[int, float]] | None = None,
) -> tuple[ValueHead, TrainReport]:
    """Train one head on scored rollouts; write checkpoints each epoch and the final head to ``out_dir``.

    ``action_rewards`` (one list per rollout, one reward per action: see
    :mod:`personalize.training.shaping`) replaces the default of the final score on the last action.
    ``init`` warm-starts from a trained head of the same kind and shape (its value output and
    adapter; a checkpoint to resume from takes precedence); the epochs are counted afresh. A head
    without budget features can warm-start a budget-aware one (its budget features start at zero).
    ``horizon`` is the rollouts' token limit (max_new_tokens): a budget-aware head needs it.
    ``stop_rewards`` (per rollout, :func:`personalize.training.stopping.stop_scores`) are what the
    stopping option (``config.stop_option``) needs.

    ``implicit`` heads are not value heads: they are fine-tuned on the best rollouts instead
    (see :mod:`personalize.training.implicit`; no checkpoints).
    """
    from accelerate import Accelerator

    if len(rollouts) != len(scores) or not rollouts:
        raise ConfigError(f"need one score per rollout, got {len(rollouts)} rollouts and {len(scores)} scores")
    if init is not None:
        check_init(init, config, base.hidden_size)
    if config.budget_scales and horizon is None:
        raise ConfigError("a budget-aware head needs the rollouts' token limit (horizon)")
    if action_rewards is not None and len(action_rewards) != len(rollouts):
        got = len(action_rewards)
        raise ConfigError(f"need one list of action rewards per rollout, got {got} for {len(rollouts)}")
    if config.stop_option and (stop_rewards is None or len(stop_rewards) != len(rollouts)):
        have = "none" if stop_rewards is None else str(len(stop_rewards))
        raise ConfigError(f"the stopping option needs one stop-reward map per rollout, got {have} for {len(rollouts)}")
    if config.unfinished_penalty:
        scores, action_rewards = charge_unfinished(rollouts, scores, action_rewards, config.unfinished_penalty)
    if config.kind == "implicit":
        from personalize.training.implicit import train_implicit_head

        return train_implicit_head(
            base,
            rollouts,
            scores,
            objective,
            out_dir,
            reward_name=reward_name,
            config=config,
            description=description,
            version=version,
            extra_meta=extra_meta,
            on_step=on_step,
        )
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    pad, eos = base.pad_token_id, base.eos_token_ids[0]
    paid = list(action_rewards) if action_rewards is not None else sparse_rewards(rollouts, scores, eos)
    returns = torch.tensor(list(scores), dtype=torch.float32)
    report = TrainReport(return_mean=float(returns.mean()), return_std=float(returns.std().clamp_min(1e-6)))
    report.rollouts = len(rollouts)
    stopping: StopTargets | None = None
    if config.stop_option and stop_rewards is not None:
        stopping = stop_targets(
            rollouts, scores, paid, stop_rewards, eos, decode=base.decode, unfinished_penalty=config.unfinished_penalty
        )
        report.stopping = {
            "ends": sum(len(v) for v in stopping.values),
            "rule_stops": sum(len(s) for s in stopping.stops),
            "rule_stopped_rollouts": sum(1 for s in stopping.stops if s),
            "rollout_mean": round(float(returns.mean()), 6),
            "rule_mean": round(sum(stopping.rule_scores) / len(stopping.rule_scores), 6),
        }
        extra_meta = {**(extra_meta or {}), "stopping": report.stopping}
    lora = LoraSpec(config.lora_rank, config.lora_alpha, config.lora_targets) if config.kind == "lora" else None
    head = new_head(
        base,
        objective,
        kind=config.kind,
        version=version,
        value_rank=config.value_rank,
        lora=lora,
        description=description,
        reward=reward_name,
        init_bias=report.return_mean,
        seed=config.seed,
        budget_scales=config.budget_scales,
        steer=config.steer,
    )
    head.adapter = None  # peft initialises its own adapter (B = 0: the head starts as the base model)
    if init is not None:
        head.output.load_plain(init.output.state_dict())
        head.adapter = init.adapter
    checkpoint = checkpoint_dir(Path(out_dir))
    first_epoch = 0
    if resume and (checkpoint / "state.json").is_file():
        state = json.loads((checkpoint / "state.json").read_text())
        restored = load_head(checkpoint / "head", base)
        head.output.load_plain(restored.output.state_dict())
        head.adapter = restored.adapter
        first_epoch, report.epoch_losses = int(state["epoch"]), list(state["losses"])
    head.output.requires_grad_(True)
    trainable = _Trainable(base, head, config)
    lora_params = [p for n, p in trainable.named_parameters() if "lora_" in n and p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": lora_params, "lr": config.lr}, {"params": list(head.output.parameters()), "lr": config.head_lr}],
        weight_decay=0.0,
    )
    order = torch.randperm(len(rollouts), generator=torch.Generator().manual_seed(config.seed)).tolist()
    batches = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
    accelerator = Accelerator(cpu=base.device.type == "cpu")
    trainable, optimizer = accelerator.prepare(trainable, optimizer)
    model: _Trainable = accelerator.unwrap_model(trainable)
    my_batches = batches[accelerator.process_index :: accelerator.num_processes]
    for epoch in range(first_epoch, config.epochs):
        total, count = 0.0, 0
        for step, idx in enumerate(my_batches):
            stop = None if stopping is None else ([stopping.values[i] for i in idx], [stopping.stops[i] for i in idx])
            batch = _collate([rollouts[i] for i in idx], [paid[i] for i in idx], pad, eos, horizon, stop)
            batch = _Batch(*(t.to(accelerator.device) for t in asdict_shallow(batch)))
            q, q_end = trainable(batch)  # (B, T), (B, T, E)
            cut = {} if stopping is None else {"stops": batch.stops, "stop_values": batch.end_returns}
            targets = lambda_returns(batch.rewards, q, batch.mask, gamma=config.gamma, lam=config.lam, **cut)
            error, targeted = ((q - targets) ** 2 * batch.mask).sum(), batch.mask.sum()
            if stopping is not None:  # ending at each sentence end: its known return, for every end token
                end_error = ((q_end - batch.end_returns.unsqueeze(-1)) ** 2).mean(-1)
                error, targeted = error + (end_error * batch.ends).sum(), targeted + batch.ends.sum()
            loss = error / targeted.clamp_min(1.0)
            optimizer.zero_grad()
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(list(model.parameters()), config.grad_clip)
            optimizer.step()
            total, count = total + float(loss.detach()), count + 1
            if on_step is not None:
                on_step(epoch, step, float(loss.detach()))
        report.epoch_losses.append(total / max(count, 1))
        report.scale = _scale(base, model, rollouts, paid, order, accelerator.device, horizon)
        if accelerator.is_main_process:  # a checkpoint is a calibrated head too: it can be evaluated as it stands
            _save(head, model, checkpoint / "head", report, config, extra_meta)
            state = {"epoch": epoch + 1, "losses": report.epoch_losses}
            (checkpoint / "state.json").write_text(json.dumps(state))
    if first_epoch >= config.epochs:  # resumed after the last epoch: nothing was trained or calibrated in this run
        report.scale = _scale(base, model, rollouts, paid, order, accelerator.device, horizon)
    report.seconds = time.perf_counter() - start
    final = _save(head, model, Path(out_dir), report, config, extra_meta)
    if accelerator.is_main_process:
        shutil.rmtree(checkpoint, ignore_errors=True)
    return final, report


def check_init(init: ValueHead, config: TrainConfig, hidden_size: int) -> None:
    """A warm start must be a value head of the kind, value rank and LoRA shape configured (ConfigError)."""
    got = init.meta
    if config.kind == "implicit":  # fine-tuned from the base model: a warm start would be ignored
        raise ConfigError("--init applies to value heads (lora, linear); implicit heads are fine-tuned")
    if got.kind != config.kind:
        raise ConfigError(f"--init head is a {got.kind!r} head; training a {config.kind!r} head")
    if got.value_rank != config.value_rank or got.hidden_size != hidden_size:
        raise ConfigError(
            f"--init head's value output (hidden {got.hidden_size}, rank {got.value_rank}) does not match "
            f"this head's (hidden {hidden_size}, rank {config.value_rank})"
        )
    want = LoraSpec(config.lora_rank, config.lora_alpha, config.lora_targets) if config.kind == "lora" else None

    def shape(spec: LoraSpec | None) -> tuple[int, float, tuple[str, ...]] | None:
        return None if spec is None else (spec.rank, float(spec.alpha), tuple(spec.target_modules))

    if shape(got.lora) != shape(want):
        raise ConfigError(f"--init head's LoRA {got.lora} does not match the one configured, {want}")
    if got.budget_scales and tuple(got.budget_scales) != tuple(config.budget_scales):
        raise ConfigError(
            f"--init head's budget features {list(got.budget_scales)} do not match the ones configured, "
            f"{list(config.budget_scales)}"
        )


def asdict_shallow(batch: _Batch) -> tuple[torch.Tensor, ...]:
    return tuple(getattr(batch, f.name) for f in fields(batch))


def _save(
    head: ValueHead,
    model: _Trainable,
    directory: Path,
    report: TrainReport,
    config: TrainConfig,
    extra_meta: dict[str, Any] | None,
) -> ValueHead:
    training = {
        "config": {**asdict(config), "lora_targets": list(config.lora_targets)},
        "epoch_losses": [round(x, 6) for x in report.epoch_losses],
        "rollouts": report.rollouts,
        "seconds": round(report.seconds, 1),
        **(extra_meta or {}),
    }
    calibration = Calibration(report.return_mean, report.return_std, report.scale)
    meta = replace(head.meta, calibration=calibration, training=training)
    saved = ValueHead(meta, head.output, model.adapter_state())
    save_head(saved, directory)
    return saved
