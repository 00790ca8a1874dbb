"""The loaded heads as the decoder uses them: an immutable set, rebuilt whenever a head changes.

A :class:`HeadSet` numbers the heads (a value slot per objective, a LoRA slot per adapter head;
LoRA slot 0 is the base row), stacks their value outputs into one :class:`ValueStack`, and
stacks their adapters per fused projection of each layer into :class:`AdapterGroup` s, so that
a forward applies every row's own adapter with two small matrix products per projection,
however many heads are loaded. It also says how many bottom layers no adapter touches: those
run once per sequence, not once per row.

Adding or removing a head builds a new set (``with_head`` / ``without``); a running batch keeps
the set it started with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import torch

from personalize.decoding.backbone import GROUPS, Backbone
from personalize.decoding.sampling import ValueStack
from personalize.errors import HeadFormatError, UnknownObjectiveError
from personalize.heads import ADAPTER_KINDS, HeadMeta, ValueHead, check_compatible, linear_layers
from personalize.models import BaseModel


@dataclass(frozen=True)
class AdapterGroup:
    """Every adapter head's LoRA delta on one fused projection: ``((x A^T) * mask) B^T``.

    Column c of ``down``/``up`` belongs to LoRA slot ``slot[c]``; a token keeps only its row's
    columns (the mask), so a base row gets exactly zero.
    """

    down: torch.Tensor  # (C, in) float32: the A matrices of every (head, member module), stacked
    up: torch.Tensor  # (out, C) float32: B * scaling at each member's output rows, zeros elsewhere
    slot: torch.Tensor  # (C,) LoRA slot of each column

    def restrict(self, active: torch.Tensor) -> AdapterGroup | None:
        """Only the columns of the LoRA slots in ``active`` (None when none is left)."""
        keep = torch.isin(self.slot, active)
        if not bool(keep.any()):
            return None
        if bool(keep.all()):
            return self
        return AdapterGroup(self.down[keep], self.up[:, keep], self.slot[keep])

    def delta(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (N, in), mask (N, C) float32, 1 where the token's row uses that column's slot -> (N, out) in x's dtype.

        In float32 whatever the runtime dtype: products this thin are faster in float32 on a CPU than
        in bf16, and the delta keeps its precision until it is added."""
        low = (x.float() @ self.down.T) * mask  # (N, C)
        return (low @ self.up.T).to(x.dtype)  # (N, out)


@dataclass(frozen=True)
class HeadSet:
    """Loaded heads, their slots and their stacked tensors (immutable)."""

    heads: Mapping[str, ValueHead]
    value_slot: Mapping[str, int]
    lora_slot: Mapping[str, int]  # 1.. (0 is the base row)
    implicit: frozenset[str]
    inv_std: Mapping[str, float]  # 1 / return std: weights chunk-level scores
    stack: ValueStack | None
    adapters: tuple[Mapping[str, AdapterGroup], ...]  # per layer: fused projection -> stacked deltas
    split: int
    """Bottom layers no adapter touches (run once per sequence, their output fanned out to its rows)."""

    @classmethod
    def build(
        cls, base: BaseModel, backbone: Backbone, heads: Sequence[ValueHead], *, share_layers: bool = True
    ) -> HeadSet:
        by_name = {head.objective: head for head in heads}
        for head in by_name.values():
            check_compatible(head, base)
        lora_heads = [name for name, h in by_name.items() if h.meta.kind in ADAPTER_KINDS]
        adapters = _stack_adapters(base, backbone, [by_name[n] for n in lora_heads])
        adapted = [layer for layer, groups in enumerate(adapters) if groups]
        split = min(adapted, default=backbone.num_layers) if share_layers else 0
        return cls(
            heads=MappingProxyType(by_name),
            value_slot=MappingProxyType({name: i for i, name in enumerate(by_name)}),
            lora_slot=MappingProxyType({name: i + 1 for i, name in enumerate(lora_heads)}),
            implicit=frozenset(name for name, h in by_name.items() if h.meta.kind == "implicit"),
            inv_std=MappingProxyType(
                {name: 1.0 / max(h.meta.calibration.return_std, 1e-6) for name, h in by_name.items()}
            ),
            stack=_value_stack(base, list(by_name.values())),
            adapters=adapters,
            split=split,
        )

    def with_head(self, base: BaseModel, backbone: Backbone, head: ValueHead, *, share_layers: bool) -> HeadSet:
        """This set with ``head`` added (or replacing the head of its objective)."""
        heads = {**self.heads, head.objective: head}
        return HeadSet.build(base, backbone, list(heads.values()), share_layers=share_layers)

    def without(self, base: BaseModel, backbone: Backbone, objective: str, *, share_layers: bool) -> HeadSet:
        if objective not in self.heads:
            raise UnknownObjectiveError(objective, self.heads)
        heads = [h for name, h in self.heads.items() if name != objective]
        return HeadSet.build(base, backbone, heads, share_layers=share_layers)

    @property
    def objectives(self) -> Mapping[str, HeadMeta]:
        return {name: head.meta for name, head in self.heads.items()}

    def rows_for(self, names: Sequence[str]) -> int:
        """Batch rows a sequence reading heads ``names`` occupies: its base row plus one per adapter head."""
        return 1 + sum(1 for name in names if name in self.lora_slot)


def _stack_adapters(
    base: BaseModel, backbone: Backbone, heads: Sequence[ValueHead]
) -> tuple[Mapping[str, AdapterGroup], ...]:
    """Per layer and fused projection, the stacked adapters of ``heads`` (LoRA slots 1.. in order)."""
    module_names = list(linear_layers(base.model))
    pairs = [head.adapter_pairs(module_names) for head in heads]
    for head, modules in zip(heads, pairs, strict=True):
        outside = sorted(m for m in modules if backbone.layer_of(m) is None)
        if outside:
            raise HeadFormatError(
                f"head {head.objective!r} adapts {', '.join(outside)}; the decoder applies adapters to the "
                f"projections of the decoder layers only ({', '.join(m for g in GROUPS.values() for m in g)})"
            )
    dev = backbone.device
    patterns: dict[tuple[int, ...], torch.Tensor] = {}  # equal column layouts share one tensor (one mask per step)
    layers: list[Mapping[str, AdapterGroup]] = []
    for layer in range(backbone.num_layers):
        groups: dict[str, AdapterGroup] = {}
        for group, members in GROUPS.items():
            names = [backbone.module_name(layer, member) for member in members]
            widths = [_out_features(base, name) for name in names]
            downs, ups, slots = [], [], []
            offsets = [sum(widths[:i]) for i in range(len(widths))]
            for slot, modules in enumerate(pairs, start=1):
                for name, offset, width in zip(names, offsets, widths, strict=True):
                    if name not in modules:
                        continue
                    a, b = modules[name]  # (r, in), (width, r) with the scaling folded in
                    up = torch.zeros(sum(widths), a.shape[0])
                    up[offset : offset + width] = b.float()
                    downs.append(a.float())
                    ups.append(up)
                    slots.extend([slot] * a.shape[0])
            if downs:
                groups[group] = AdapterGroup(
                    torch.cat(downs).to(dev),
                    torch.cat(ups, dim=1).to(dev),
                    patterns.setdefault(tuple(slots), torch.tensor(slots, dtype=torch.long, device=dev)),
                )
        layers.append(MappingProxyType(groups))
    return tuple(layers)


def _out_features(base: BaseModel, name: str) -> int:
    """Output width of the model's linear layer ``name``."""
    linear = base.model.get_submodule(name)
    assert isinstance(linear, torch.nn.Linear)
    return linear.out_features


def _value_stack(base: BaseModel, heads: Sequence[ValueHead]) -> ValueStack | None:
    """All heads' value outputs stacked by value slot, float32 on the decode device."""
    if not heads:
        return None
    dev = base.device
    n, hidden = len(heads), base.hidden_size
    rank = max([h.meta.value_rank for h in heads] + [1])
    down = torch.zeros(n, rank, hidden)  # implicit heads (rank 0) keep zeros: no explicit value
    up = torch.zeros(n, hidden, rank)
    state = torch.zeros(n, hidden)
    bias = torch.zeros(n)
    inv_scale = torch.zeros(n)
    features = max(len(h.meta.budget_scales) for h in heads)
    budget_dir = torch.zeros(n, features, hidden)  # heads with fewer features pad with zeros
    budget_bias = torch.zeros(n, features)
    budget_scales = torch.ones(n, features)
    for slot, head in enumerate(heads):
        r, out = head.meta.value_rank, head.output
        down[slot, :r] = out.down.weight.detach().float().cpu()
        up[slot, :, :r] = out.up.weight.detach().float().cpu()
        state[slot] = out.state.weight.detach().float().cpu()[0]
        bias[slot] = float(out.bias.detach())
        inv_scale[slot] = 1.0 / head.meta.calibration.scale
        k = len(head.meta.budget_scales)
        if k:
            budget_dir[slot, :k] = out.budget_dir.detach().float().cpu()
            budget_bias[slot, :k] = out.budget_bias.detach().float().cpu()
            budget_scales[slot, :k] = torch.tensor(head.meta.budget_scales)
    budget: tuple[torch.Tensor | None, ...] = (None, None, None)
    if features:
        budget = (budget_dir.to(dev), budget_bias.to(dev), budget_scales.to(dev))
    end_only = torch.tensor([float(h.meta.steer == "end") for h in heads])
    stopping: tuple[torch.Tensor | None, ...] = (None, None)
    if end_only.any():
        stopping = (end_only.to(dev), torch.tensor(base.eos_token_ids, dtype=torch.long, device=dev))
    return ValueStack(down.to(dev), up.to(dev), inv_scale.to(dev), state.to(dev), bias.to(dev), *budget, *stopping)
