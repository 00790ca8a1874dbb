"""Many LoRA adapters on one frozen base, selected per batch row.

Every targeted ``nn.Linear`` of the base model is wrapped once in a
:class:`MultiLoRALinear` that holds all loaded adapters stacked into two tensors
(slot 0 is all zeros: the ``__base__`` row). A forward with row slots
``[0, 3, 1]`` gives row 0 the plain base output, row 1 adapter 3 and row 2
adapter 1, with two batched matmuls per layer however many adapters are loaded.

Adapters are stored in peft's on-disk format (``adapter_model.safetensors`` +
``adapter_config.json``), so any peft LoRA on q/k/v/o/gate/up/down projections
can be used, and adapters trained here can be loaded by peft.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from personalize.errors import HeadFormatError

PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class LoraSpec:
    """Shape of one adapter: rank, alpha and the module names it targets (e.g. q_proj)."""

    rank: int
    alpha: float
    target_modules: tuple[str, ...]

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


class MultiLoRALinear(nn.Module):
    """A frozen linear layer plus stacked LoRA deltas chosen per batch row."""

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.base = base
        dev, dt = base.weight.device, base.weight.dtype
        # (N, r, in) and (N, out, r); slot 0 is the zero adapter of the base row.
        self.register_buffer("lora_a", torch.zeros(1, 1, base.in_features, device=dev, dtype=dt), persistent=False)
        self.register_buffer("lora_b", torch.zeros(1, base.out_features, 1, device=dev, dtype=dt), persistent=False)
        self.rows_a: torch.Tensor | None = None  # (R, r, in) gathered for the current batch
        self.rows_b: torch.Tensor | None = None  # (R, out, r)

    @property
    def num_slots(self) -> int:
        return int(self.lora_a.shape[0])

    def set_adapters(self, pairs: Sequence[tuple[torch.Tensor, torch.Tensor] | None]) -> None:
        """Install a stack built by :meth:`build_stack` from ``pairs``."""
        self.install(*self.build_stack(pairs))

    def build_stack(
        self, pairs: Sequence[tuple[torch.Tensor, torch.Tensor] | None]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stack ``pairs[i]`` = (A (r,in), B·scaling (out,r)) or None into slots i+1; slot 0 stays zero.

        A layer no adapter touches keeps only the zero slot and runs as the plain linear layer.
        """
        if all(pair is None for pair in pairs):
            pairs = []
        rank = max([pair[0].shape[0] for pair in pairs if pair is not None] or [1])
        dev, dt = self.base.weight.device, self.base.weight.dtype
        a_stack = torch.zeros(len(pairs) + 1, rank, self.base.in_features, device=dev, dtype=dt)
        b_stack = torch.zeros(len(pairs) + 1, self.base.out_features, rank, device=dev, dtype=dt)
        for slot, pair in enumerate(pairs, start=1):
            if pair is None:
                continue
            a, b = pair
            a_stack[slot, : a.shape[0]] = a.to(dev, dt)  # zero-padded ranks stay exact
            b_stack[slot, :, : b.shape[1]] = b.to(dev, dt)
        return a_stack, b_stack

    def install(self, a_stack: torch.Tensor, b_stack: torch.Tensor) -> None:
        """Make this stack current (an engine installs its own before each batch: engines may share a model)."""
        self.lora_a, self.lora_b = a_stack, b_stack
        self.rows_a = self.rows_b = None

    def select_rows(self, row_slots: torch.Tensor | None) -> None:
        """Gather each row's adapter once per batch layout (not per step)."""
        if row_slots is None or self.num_slots == 1 or not bool((row_slots > 0).any()):
            self.rows_a = self.rows_b = None
            return
        self.rows_a = self.lora_a[row_slots]  # (R, r, in)
        self.rows_b = self.lora_b[row_slots]  # (R, out, r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)  # (R, T, out)
        if self.rows_a is None or self.rows_b is None:
            return y
        low = torch.bmm(x, self.rows_a.transpose(1, 2))  # (R, T, r)
        return y + torch.bmm(low, self.rows_b.transpose(1, 2))  # (R, T, out)


def wrap_targets(model: nn.Module, target_modules: Sequence[str]) -> dict[str, MultiLoRALinear]:
    """Wrap (once) every ``nn.Linear`` whose last name part is a target; return all wrappers."""
    wrapped: dict[str, MultiLoRALinear] = {
        name: mod for name, mod in model.named_modules() if isinstance(mod, MultiLoRALinear)
    }
    targets = set(target_modules)
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in targets and name not in wrapped:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            if isinstance(parent, MultiLoRALinear):
                continue
            wrapper = MultiLoRALinear(module)
            setattr(parent, child, wrapper)
            wrapped[name] = wrapper
    return wrapped


def unwrap_targets(model: nn.Module) -> None:
    """Put every wrapped linear layer back in place of its :class:`MultiLoRALinear` (on a copy of a model
    an engine decoded with, before peft adapts it)."""
    for name, module in [(n, m) for n, m in model.named_modules() if isinstance(m, MultiLoRALinear)]:
        model.set_submodule(name, module.base)


def adapter_pairs(
    weights: Mapping[str, torch.Tensor], spec: LoraSpec, module_names: Sequence[str]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Map peft-format tensors to ``{module name: (A, B·scaling)}``; check every name exists."""
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    known = set(module_names)
    for key, tensor in weights.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[: -len(".lora_A.weight")].removeprefix(PEFT_PREFIX)
        b_key = key.replace(".lora_A.weight", ".lora_B.weight")
        if module not in known:
            raise HeadFormatError(f"adapter targets {module!r}, which is not a linear layer of this backbone")
        if b_key not in weights:
            raise HeadFormatError(f"adapter has {key} but no {b_key}")
        a, b = tensor, weights[b_key]
        if a.shape[0] != spec.rank or b.shape[1] != spec.rank:
            raise HeadFormatError(f"adapter {module}: rank {a.shape[0]}/{b.shape[1]} != configured r={spec.rank}")
        pairs[module] = (a, b * spec.scaling)
    if not pairs:
        raise HeadFormatError("adapter_model.safetensors holds no lora_A/lora_B weights")
    return pairs


@contextmanager
def rows_selected(wrappers: Mapping[str, MultiLoRALinear], row_slots: torch.Tensor | None) -> Iterator[None]:
    """Select per-row adapters for the duration of a block, then restore plain base behaviour."""
    for wrapper in wrappers.values():
        wrapper.select_rows(row_slots)
    try:
        yield
    finally:
        for wrapper in wrappers.values():
            wrapper.select_rows(None)
