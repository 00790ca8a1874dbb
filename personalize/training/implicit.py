"""Implicit heads: a LoRA adapter fine-tuned to BE the tuned policy for an objective (IVG's token level).

Rejection-sampling fine-tuning on the shared, cached rollouts: keep each prompt's
best-scoring response, keep the best ``top_fraction`` of those, and minimise the
negative log-likelihood of the kept responses (EOS included when the response
ended on its own, so the adapter also learns where to stop). At decode time the
engine reads ``log pi_tuned − log pi_base`` from the adapter row and the base row of
the same forward; the head has no value output and its calibration scale is 1.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from personalize.errors import ConfigError
from personalize.heads import Calibration, ValueHead, new_head, save_head
from personalize.lora import LoraSpec
from personalize.models import BaseModel
from personalize.training.adapters import adapter_state, peft_copy
from personalize.training.config import TrainConfig, TrainReport
from personalize.training.rollouts import Rollout, actions
from personalize.training.scored import HeadTarget, ScoredRollouts


def select_best(rollouts: Sequence[Rollout], scores: Sequence[float], top_fraction: float) -> list[int]:
    """Each prompt's best-scoring rollout (ties: the first), then the best ``top_fraction`` of those; sorted."""
    best: dict[str, int] = {}
    for i, rollout in enumerate(rollouts):
        j = best.get(rollout.prompt)
        if j is None or scores[i] > scores[j]:
            best[rollout.prompt] = i
    ranked = sorted(best.values(), key=lambda i: (-scores[i], i))
    return sorted(ranked[: max(1, round(len(ranked) * top_fraction))])


@dataclass(frozen=True)
class _Batch:
    input_ids: torch.Tensor  # (B, L) right-padded prompt + target
    attention: torch.Tensor  # (B, L)
    positions: torch.Tensor  # (B, T) index of the hidden state that predicts target token t
    targets: torch.Tensor  # (B, T) target token ids (response, + EOS when it stopped on its own)
    mask: torch.Tensor  # (B, T)

    def to(self, device: torch.device) -> _Batch:
        return _Batch(
            *(t.to(device) for t in (self.input_ids, self.attention, self.positions, self.targets, self.mask))
        )


def _collate(rollouts: Sequence[Rollout], pad_id: int, eos: int) -> _Batch:
    targets = [actions(r, eos) for r in rollouts]
    B = len(rollouts)
    L = max(len(r.prompt_ids) + len(t) for r, t in zip(rollouts, targets, strict=True))
    T = max(max(len(t) for t in targets), 1)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    attention = torch.zeros(B, L, dtype=torch.long)
    positions = torch.zeros(B, T, dtype=torch.long)
    target_ids = torch.zeros(B, T, dtype=torch.long)
    mask = torch.zeros(B, T)
    for b, (r, target) in enumerate(zip(rollouts, targets, strict=True)):
        seq = list(r.prompt_ids) + target
        P, n = len(r.prompt_ids), len(target)
        ids[b, : len(seq)] = torch.tensor(seq)
        attention[b, : len(seq)] = 1
        if n:
            positions[b, :n] = torch.arange(P - 1, P - 1 + n)
            target_ids[b, :n] = torch.tensor(target)
            mask[b, :n] = 1.0
    return _Batch(ids, attention, positions, target_ids, mask)


def _nll(model: Any, batch: _Batch) -> torch.Tensor:
    """Mean negative log-likelihood of the target tokens (LM head applied at target positions only)."""
    inner = model.get_base_model()
    hidden = inner.get_decoder()(input_ids=batch.input_ids, attention_mask=batch.attention).last_hidden_state
    H = hidden.shape[-1]
    h = hidden.gather(1, batch.positions.unsqueeze(-1).expand(-1, -1, H))  # (B, T, H)
    logprobs = torch.log_softmax(inner.get_output_embeddings()(h).float(), dim=-1)  # (B, T, V)
    taken = logprobs.gather(-1, batch.targets.unsqueeze(-1)).squeeze(-1)  # (B, T)
    return -(taken * batch.mask).sum() / batch.mask.sum().clamp_min(1.0)


def train_implicit_head(
    base: BaseModel,
    data: ScoredRollouts,
    target: HeadTarget,
    config: TrainConfig,
    *,
    on_step: Callable[[int, int, float], None] | None = None,
) -> tuple[ValueHead, TrainReport]:
    """Fine-tune a LoRA adapter on the best rollouts and save it as an ``implicit`` head in ``target.out_dir``."""
    rollouts, scores = data.rollouts, data.scores
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    chosen = [i for i in select_best(rollouts, scores, config.top_fraction) if actions(rollouts[i], 0)]
    if not chosen:
        raise ConfigError("no selected rollout has a response to learn from")
    kept = [scores[i] for i in chosen]
    report = TrainReport(
        return_mean=statistics.fmean(kept),
        return_std=statistics.pstdev(scores) or 1.0,
        rollouts=len(chosen),
    )
    model = peft_copy(base, config).to(base.device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    order = torch.randperm(len(chosen), generator=torch.Generator().manual_seed(config.seed)).tolist()
    batches = [[chosen[k] for k in order[i : i + config.batch_size]] for i in range(0, len(order), config.batch_size)]
    eos = base.eos_token_ids[0]
    for epoch in range(config.epochs):
        total = 0.0
        for step, idx in enumerate(batches):
            loss = _nll(model, _collate([rollouts[i] for i in idx], base.pad_token_id, eos).to(base.device))
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            total += float(loss.detach())
            if on_step is not None:
                on_step(epoch, step, float(loss.detach()))
        report.epoch_losses.append(total / len(batches))
    report.seconds = time.perf_counter() - start
    head = _implicit_head(base, model, report, config, target)
    save_head(head, Path(target.out_dir))
    return head, report


def _implicit_head(
    base: BaseModel, model: Any, report: TrainReport, config: TrainConfig, target: HeadTarget
) -> ValueHead:
    lora = LoraSpec(config.lora_rank, config.lora_alpha, config.lora_targets)
    head = new_head(
        base,
        target.objective,
        kind="implicit",
        version=target.version,
        lora=lora,
        description=target.description,
        steer=config.steer,
    )
    training = {
        "method": "rejection-sampling fine-tuning (best rollout per prompt, top fraction)",
        "config": {**asdict(config), "lora_targets": list(config.lora_targets)},
        "epoch_losses": [round(x, 6) for x in report.epoch_losses],
        "rollouts": report.rollouts,
        "seconds": round(report.seconds, 1),
        **target.extra_meta,
    }
    calibration = Calibration(report.return_mean, report.return_std, 1.0)  # log-prob units: weight 1 = tuned policy
    meta = replace(head.meta, reward=target.reward_name, calibration=calibration, training=training)
    return ValueHead(meta, head.output, adapter_state(model))
