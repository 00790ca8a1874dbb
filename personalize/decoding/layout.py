"""The batch layout: which row feeds which head for which sequence, as index tensors.

Built in one place (:func:`build_layout`) whenever the batch's membership changes, from the
sequences in slot order, the cache's rows (``row_sequence``/``row_adapter``) and the head set;
read by every step until the next change. Pure: lists and specs in, tensors out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from personalize.decoding.head_set import HeadSet
from personalize.decoding.perturb import Perturbations, build_perturbations
from personalize.decoding.sampling import SamplingTensors, ValueEntries
from personalize.decoding.sequences import SequenceSpec


@dataclass(frozen=True)
class BatchLayout:
    """Index tensors of the live batch (S sequences in slot order, R rows in row-slot order)."""

    live: tuple[int, ...]  # sequence numbers (into the batch's outputs), in slot order
    base_rows: torch.Tensor  # (S,) each sequence's base row
    entries: ValueEntries  # token level: what steers each sequence's scores
    scorers: ValueEntries  # chunk level: what ranks each sequence's partial response (ivg)
    entry_owner: tuple[tuple[int, str], ...]  # (slot, objective) of each value entry
    perturb: Perturbations | None  # AISP pre-logit perturbations
    sampling: SamplingTensors
    adapters: tuple[int, ...]  # LoRA slots some row uses


@dataclass
class _EntryLists:
    """Value entries gathered per sequence while a layout is built."""

    source_row: list[int] = field(default_factory=list)
    slot: list[int] = field(default_factory=list)
    sequence: list[int] = field(default_factory=list)
    coef: list[float] = field(default_factory=list)
    base_row: list[int] = field(default_factory=list)
    implicit: list[float] = field(default_factory=list)

    def add(self, source_row: int, slot: int, sequence: int, coef: float, base_row: int, implicit: bool) -> None:
        self.source_row.append(source_row)
        self.slot.append(slot)
        self.sequence.append(sequence)
        self.coef.append(coef)
        self.base_row.append(base_row)
        self.implicit.append(float(implicit))

    def tensors(self, dev: torch.device) -> ValueEntries:
        def ints(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.long, device=dev)

        implicit = torch.tensor(self.implicit, dtype=torch.float32, device=dev) if any(self.implicit) else None
        return ValueEntries(
            ints(self.source_row),
            ints(self.slot),
            ints(self.sequence),
            torch.tensor(self.coef, dtype=torch.float32, device=dev),
            implicit=implicit,
            base_row=ints(self.base_row) if implicit is not None else None,
        )


def sampling_tensors(specs: Sequence[SequenceSpec], dev: torch.device) -> SamplingTensors:
    def ints(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=dev)

    def floats(values: list[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32, device=dev)

    return SamplingTensors(
        temperature=floats([s.temperature for s in specs]),
        top_p=floats([s.top_p for s in specs]),
        top_k=ints([s.top_k for s in specs]),
        seeds=ints([s.seed for s in specs]),
        sample_top_k=ints([s.sample_top_k for s in specs]),
        max_new_tokens=ints([s.max_new_tokens for s in specs]),
        max_top_k=max(s.top_k for s in specs),
        max_sample_top_k=max(s.sample_top_k for s in specs),
        use_top_p=any(s.top_p < 1.0 and s.temperature > 0 for s in specs),
        within_top_k=torch.tensor([s.within_top_k for s in specs], dtype=torch.bool, device=dev),
        any_within_top_k=any(s.within_top_k for s in specs),
        top_logprobs=max(s.top_logprobs for s in specs),
        logit_bias=_logit_bias(specs, dev),
    )


def _logit_bias(specs: Sequence[SequenceSpec], dev: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Each sequence's biased token ids and biases (S, B), padded with bias 0 on token 0; None: no bias."""
    width = max(len(s.logit_bias) for s in specs)
    if width == 0:
        return None
    ids = torch.zeros(len(specs), width, dtype=torch.long)
    values = torch.zeros(len(specs), width)
    for row, spec in enumerate(specs):
        for col, (token, bias) in enumerate(spec.logit_bias):
            ids[row, col], values[row, col] = token, bias
    return ids.to(dev), values.to(dev)


def build_layout(
    live: Sequence[int],
    specs: Sequence[SequenceSpec],
    row_sequence: Sequence[int],
    row_adapter: Sequence[int],
    heads: HeadSet,
    hidden_size: int,
    dev: torch.device,
) -> BatchLayout:
    """The layout of sequences ``live`` (numbers, in slot order, with their ``specs``) over the cache's rows."""
    rows: dict[tuple[int, int], int] = {
        (seq, adapter): r for r, (seq, adapter) in enumerate(zip(row_sequence, row_adapter, strict=True))
    }
    steer, score = _EntryLists(), _EntryLists()
    owners: list[tuple[int, str]] = []
    base_rows = [rows[(pos, 0)] for pos in range(len(live))]
    for pos, spec in enumerate(specs):
        base_row = base_rows[pos]

        def source(name: str) -> int:
            lora = heads.lora_slot.get(name)
            return base_row if lora is None else rows[(pos, lora)]  # noqa: B023 - used within the iteration

        for name, coef in spec.steer:
            steer.add(source(name), heads.value_slot[name], pos, coef, base_row, name in heads.implicit)
            owners.append((pos, name))
        for name, weight in spec.score:
            coef = weight * heads.inv_std[name]
            score.add(source(name), heads.value_slot[name], pos, coef, base_row, False)
    return BatchLayout(
        live=tuple(live),
        base_rows=torch.tensor(base_rows, dtype=torch.long, device=dev),
        entries=steer.tensors(dev),
        scorers=score.tensors(dev),
        entry_owner=tuple(owners),
        perturb=build_perturbations(specs, hidden_size, dev),
        sampling=sampling_tensors(specs, dev),
        adapters=tuple(sorted({a for a in row_adapter if a > 0})),
    )
