"""The trainable copy of the backbone every adapted head starts from, and its adapter's weights.

Shared by value heads (:mod:`personalize.training.td`) and implicit heads
(:mod:`personalize.training.implicit`), which otherwise know nothing of each other.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from personalize.errors import ConfigError
from personalize.lora import PEFT_PREFIX
from personalize.models import BaseModel
from personalize.training.config import TrainConfig


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
