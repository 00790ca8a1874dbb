"""TD(lambda) regression of a token-value head on scored rollouts (DESIGN.md §1, Training).

For every response token ``a_t`` the head's ``Q(s_t, a_t)`` regresses onto the
lambda-return ``G_t`` (reward at the last response token, 0 elsewhere, or shaped per
prefix: :mod:`personalize.training.shaping`). LoRA
heads train a peft adapter on a private copy of the backbone plus the value
output; linear heads train the value output on the frozen base hidden states.
Runs on the CPU, one GPU, or several through ``accelerate launch``.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from personalize.errors import ConfigError
from personalize.heads import Calibration, ValueHead, load_head, new_head, save_head
from personalize.lora import LoraSpec
from personalize.models import BaseModel
from personalize.training.adapters import adapter_state, peft_copy
from personalize.training.config import TrainConfig, TrainReport
from personalize.training.returns import lambda_returns
from personalize.training.rollouts import Rollout, actions
from personalize.training.scored import HeadTarget, ScoredRollouts
from personalize.training.shaping import sparse_rewards
from personalize.training.stopping import StopTargets, stop_targets

__all__ = [
    "TrainConfig",
    "TrainReport",
    "adapter_state",
    "check_init",
    "checkpoint_dir",
    "peft_copy",
    "train_value_head",
]

StepFn = Callable[[int, int, float], None]


def checkpoint_dir(out_dir: Path) -> Path:
    """Where per-epoch checkpoints live: beside the head folder, removed once training completes."""
    return out_dir.with_name(out_dir.name + ".checkpoint")


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


def train_value_head(
    base: BaseModel,
    data: ScoredRollouts,
    target: HeadTarget,
    config: TrainConfig,
    *,
    init: ValueHead | None = None,
    resume: bool = True,
    on_step: StepFn | None = None,
) -> tuple[ValueHead, TrainReport]:
    """Train a lora or linear head on ``data``; write checkpoints each epoch and the final head.

    ``init`` warm-starts from a trained head of the same kind and shape (its value output and
    adapter; a checkpoint to resume from takes precedence); the epochs are counted afresh. A head
    without budget features can warm-start a budget-aware one (its budget features start at zero).
    """
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    eos = base.eos_token_ids[0]
    paid: list[list[float]] = sparse_rewards(data.rollouts, data.scores, eos)
    if data.action_rewards is not None:
        paid = [list(rewards) for rewards in data.action_rewards]
    returns = torch.tensor(list(data.scores), dtype=torch.float32)
    report = TrainReport(return_mean=float(returns.mean()), return_std=float(returns.std().clamp_min(1e-6)))
    report.rollouts = len(data.rollouts)
    stopping = _stopping(base, data, paid, config, report)
    extra = {**target.extra_meta, **({"stopping": report.stopping} if stopping is not None else {})}
    head = _fresh_head(base, target, config, report, init)
    checkpoint = checkpoint_dir(Path(target.out_dir))
    first_epoch = _resume(checkpoint, head, base, report) if resume else 0
    run = _Run(base, data, paid, stopping, config, head, report, checkpoint, extra)
    run.epochs(first_epoch, on_step)
    report.seconds = time.perf_counter() - start
    final = _save(head, run.model, Path(target.out_dir), report, config, extra)
    if run.accelerator.is_main_process:
        shutil.rmtree(checkpoint, ignore_errors=True)
    return final, report


def _stopping(
    base: BaseModel, data: ScoredRollouts, paid: list[list[float]], config: TrainConfig, report: TrainReport
) -> StopTargets | None:
    """The stopping option's targets (None without it), summed up in ``report.stopping``."""
    if not config.stop_option or data.stop_rewards is None:
        return None
    stopping = stop_targets(
        data.rollouts,
        data.scores,
        paid,
        data.stop_rewards,
        base.eos_token_ids[0],
        decode=base.decode,
        unfinished_penalty=config.unfinished_penalty,
    )
    report.stopping = {
        "ends": sum(len(v) for v in stopping.values),
        "rule_stops": sum(len(s) for s in stopping.stops),
        "rule_stopped_rollouts": sum(1 for s in stopping.stops if s),
        "rollout_mean": round(report.return_mean, 6),
        "rule_mean": round(sum(stopping.rule_scores) / len(stopping.rule_scores), 6),
    }
    return stopping


def _fresh_head(
    base: BaseModel, target: HeadTarget, config: TrainConfig, report: TrainReport, init: ValueHead | None
) -> ValueHead:
    """The untrained head (its bias at the mean return), or ``init``'s weights in its shape."""
    lora = LoraSpec(config.lora_rank, config.lora_alpha, config.lora_targets) if config.kind == "lora" else None
    head = new_head(
        base,
        target.objective,
        kind=config.kind,
        version=target.version,
        value_rank=config.value_rank,
        lora=lora,
        description=target.description,
        reward=target.reward_name,
        init_bias=report.return_mean,
        seed=config.seed,
        budget_scales=config.budget_scales,
        steer=config.steer,
    )
    head.adapter = None  # peft initialises its own adapter (B = 0: the head starts as the base model)
    if init is not None:
        head.output.load_plain(init.output.state_dict())
        head.adapter = init.adapter
    return head


def _resume(checkpoint: Path, head: ValueHead, base: BaseModel, report: TrainReport) -> int:
    """The epoch to start from: after the last checkpointed one (its weights and losses restored), else 0."""
    if not (checkpoint / "state.json").is_file():
        return 0
    state = json.loads((checkpoint / "state.json").read_text())
    restored = load_head(checkpoint / "head", base)
    head.output.load_plain(restored.output.state_dict())
    head.adapter = restored.adapter
    report.epoch_losses = list(state["losses"])
    return int(state["epoch"])


class _Run:
    """One training run's model, optimizer and batches (through ``accelerate``: CPU, one GPU or several)."""

    def __init__(
        self,
        base: BaseModel,
        data: ScoredRollouts,
        paid: list[list[float]],
        stopping: StopTargets | None,
        config: TrainConfig,
        head: ValueHead,
        report: TrainReport,
        checkpoint: Path,
        extra: Mapping[str, Any],
    ) -> None:
        from accelerate import Accelerator

        self.base, self.data, self.paid, self.stopping, self.config = base, data, paid, stopping, config
        self.head, self.report, self.checkpoint, self.extra = head, report, checkpoint, extra
        head.output.requires_grad_(True)
        trainable = _Trainable(base, head, config)
        lora_params = [p for n, p in trainable.named_parameters() if "lora_" in n and p.requires_grad]
        optimizer = torch.optim.AdamW(
            [
                {"params": lora_params, "lr": config.lr},
                {"params": list(head.output.parameters()), "lr": config.head_lr},
            ],
            weight_decay=0.0,
        )
        n = len(data.rollouts)
        self.order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed)).tolist()
        batches = [self.order[i : i + config.batch_size] for i in range(0, n, config.batch_size)]
        self.accelerator = Accelerator(cpu=base.device.type == "cpu")
        self.trainable, self.optimizer = self.accelerator.prepare(trainable, optimizer)
        self.model: _Trainable = self.accelerator.unwrap_model(self.trainable)
        self.batches = batches[self.accelerator.process_index :: self.accelerator.num_processes]

    def epochs(self, first_epoch: int, on_step: StepFn | None) -> None:
        """Epochs ``first_epoch`` to the last, each checkpointed as a calibrated head."""
        config, report = self.config, self.report
        for epoch in range(first_epoch, config.epochs):
            total, count = 0.0, 0
            for step, idx in enumerate(self.batches):
                loss = self.step(idx)
                total, count = total + loss, count + 1
                if on_step is not None:
                    on_step(epoch, step, loss)
            report.epoch_losses.append(total / max(count, 1))
            report.scale = self.calibrate()
            if self.accelerator.is_main_process:  # a checkpoint is a calibrated head: it can be evaluated as is
                _save(self.head, self.model, self.checkpoint / "head", report, config, self.extra)
                state = {"epoch": epoch + 1, "losses": report.epoch_losses}
                (self.checkpoint / "state.json").write_text(json.dumps(state))
        if first_epoch >= config.epochs:  # resumed after the last epoch: nothing was trained or calibrated here
            report.scale = self.calibrate()

    def calibrate(self) -> float:
        horizon = self.data.horizon
        return _scale(
            self.base, self.model, self.data.rollouts, self.paid, self.order, self.accelerator.device, horizon
        )

    def step(self, idx: Sequence[int]) -> float:
        """One optimizer step on the rollouts ``idx``; returns the loss."""
        stopping, config = self.stopping, self.config
        stop = None if stopping is None else ([stopping.values[i] for i in idx], [stopping.stops[i] for i in idx])
        rollouts, paid = [self.data.rollouts[i] for i in idx], [self.paid[i] for i in idx]
        batch = _collate(rollouts, paid, self.base.pad_token_id, self.base.eos_token_ids[0], self.data.horizon, stop)
        batch = _Batch(*(t.to(self.accelerator.device) for t in asdict_shallow(batch)))
        q, q_end = self.trainable(batch)  # (B, T), (B, T, E)
        cut = {} if stopping is None else {"stops": batch.stops, "stop_values": batch.end_returns}
        targets = lambda_returns(batch.rewards, q, batch.mask, gamma=config.gamma, lam=config.lam, **cut)
        error, targeted = ((q - targets) ** 2 * batch.mask).sum(), batch.mask.sum()
        if stopping is not None:  # ending at each sentence end: its known return, for every end token
            end_error = ((q_end - batch.end_returns.unsqueeze(-1)) ** 2).mean(-1)
            error, targeted = error + (end_error * batch.ends).sum(), targeted + batch.ends.sum()
        loss = error / targeted.clamp_min(1.0)
        self.optimizer.zero_grad()
        self.accelerator.backward(loss)
        self.accelerator.clip_grad_norm_(list(self.model.parameters()), config.grad_clip)
        self.optimizer.step()
        return float(loss.detach())


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
    extra_meta: Mapping[str, Any] | None,
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
