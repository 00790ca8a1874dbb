"""LoRA adapters in peft's on-disk format (``adapter_model.safetensors`` + ``adapter_config.json``).

Any peft LoRA on the q/k/v/o/gate/up/down projections can be used, and adapters trained here
can be loaded by peft. The decoder stacks every loaded adapter per projection and picks each
batch row's own (``personalize.decoding.head_set``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

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
