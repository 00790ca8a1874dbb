"""The frozen backbone as the decoder runs it: weights taken out of a Hugging Face model, once.

The decoder does not call the Hugging Face modules: it runs the layers itself over packed tokens
(``runner.py``), so that its KV cache, its per-row adapters and its projections are its own. This
module holds what that needs: each layer's norms and projections (q, k and v fused into one
matrix, gate and up into another), the rotary embedding, the final norm and the LM head, in the
runtime dtype. On a CPU with bf16 support the projections are re-laid out once for oneDNN
(AMX/AVX512-BF16 kernels); elsewhere they are plain matrices shared with the model.

Supported: Llama-family decoders (``llama``, ``mistral``, ``qwen2``, ``qwen3``: RMSNorm, rotary
embeddings, grouped-query attention, a gated MLP). Anything else is refused when the engine is built.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from personalize.errors import ModelLoadError
from personalize.models import bf16_supported

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")

GROUPS: dict[str, tuple[str, ...]] = {
    "qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "o": ("self_attn.o_proj",),
    "gate_up": ("mlp.gate_proj", "mlp.up_proj"),
    "down": ("mlp.down_proj",),
}
"""The fused projections of a layer and the Hugging Face modules each is made of (in output order)."""


class Projection:
    """A frozen linear map ``x W^T + b``; prepacked for oneDNN when ``pack`` (bf16 on a CPU)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, *, pack: bool) -> None:
        self.out_features, self.in_features = weight.shape
        self.bias = bias
        self.packed = pack
        # oneDNN picks a blocked layout for the weight once; reading it per step is then a plain stream.
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, 1) if pack else weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, in) -> (N, out)."""
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


@dataclass(frozen=True)
class LayerWeights:
    """One decoder layer: pre-attention norm, fused q/k/v, output projection, pre-MLP norm, gated MLP."""

    attn_norm: torch.Tensor  # (H,)
    qkv: Projection  # H -> (heads + 2 kv_heads) * head_dim
    o: Projection  # heads * head_dim -> H
    mlp_norm: torch.Tensor  # (H,)
    gate_up: Projection  # H -> 2 * intermediate
    down: Projection  # intermediate -> H
    q_norm: torch.Tensor | None = None  # (head_dim,) per-head RMSNorm of queries (qwen3)
    k_norm: torch.Tensor | None = None  # (head_dim,) and of keys


@dataclass(frozen=True)
class Backbone:
    """Everything the runner needs of the frozen model, in the runtime dtype and device."""

    embed: torch.Tensor  # (V, H)
    layers: tuple[LayerWeights, ...]
    norm: torch.Tensor  # (H,) final RMSNorm
    lm_head: Projection  # H -> V
    rotary: nn.Module  # the model's rotary embedding: (x, positions (1, N)) -> cos, sin (1, N, head_dim)
    act: Callable[[torch.Tensor], torch.Tensor]  # the MLP's activation (silu for all supported types)
    num_heads: int
    kv_heads: int
    head_dim: int
    eps: float
    scaling: float  # attention's 1/sqrt(head_dim) (or the model's own)
    layer_prefix: str  # "model.layers": how the Hugging Face module names of the layers start
    dtype: torch.dtype
    device: torch.device

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        return int(self.embed.shape[1])

    @property
    def kv_bytes_per_position(self) -> int:
        """Bytes of keys and values one position takes in one layer of one cache slot."""
        return 2 * self.kv_heads * self.head_dim * self.embed.element_size()

    def module_name(self, layer: int, member: str) -> str:
        """The Hugging Face name of a projection, as adapters name it: ``model.layers.3.self_attn.q_proj``."""
        return f"{self.layer_prefix}.{layer}.{member}"

    def layer_of(self, module: str) -> int | None:
        """The layer a module name belongs to (None: outside the layer stack)."""
        match = re.fullmatch(rf"{re.escape(self.layer_prefix)}\.(\d+)\.(.+)", module)
        if match is None or not any(match.group(2) in members for members in GROUPS.values()):
            return None
        return int(match.group(1))

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), weight, self.eps)

    @classmethod
    def from_model(cls, model: nn.Module, dtype: torch.dtype) -> Backbone:
        """Take the weights of a supported Hugging Face causal LM (converted to ``dtype`` where needed)."""
        config: Any = getattr(model, "config", None)
        model_type = getattr(config, "model_type", None)
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ModelLoadError(
                f"the decoder runs Llama-family models ({', '.join(SUPPORTED_MODEL_TYPES)}); this one is {model_type!r}"
            )
        _check_attention(config)
        decoder: Any = model.get_decoder()  # type: ignore[operator]
        device = next(model.parameters()).device
        pack = dtype == torch.bfloat16 and device.type == "cpu" and bf16_supported(device)

        def cast(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.detach().to(dtype)

        def project(*linears: nn.Linear) -> Projection:
            weight = torch.cat([lin.weight.detach() for lin in linears]).to(dtype)
            biases = [lin.bias for lin in linears]
            bias = None if all(b is None for b in biases) else torch.cat([_bias(lin) for lin in linears]).to(dtype)
            return Projection(weight, bias, pack=pack)

        layers = []
        for layer in decoder.layers:
            attn, mlp = layer.self_attn, layer.mlp
            q_norm, k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
            layers.append(
                LayerWeights(
                    attn_norm=layer.input_layernorm.weight.detach().to(dtype),
                    qkv=project(attn.q_proj, attn.k_proj, attn.v_proj),
                    o=project(attn.o_proj),
                    mlp_norm=layer.post_attention_layernorm.weight.detach().to(dtype),
                    gate_up=project(mlp.gate_proj, mlp.up_proj),
                    down=project(mlp.down_proj),
                    q_norm=cast(q_norm.weight) if q_norm is not None else None,
                    k_norm=cast(k_norm.weight) if k_norm is not None else None,
                )
            )
        first = decoder.layers[0]
        head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
        lm_head: Any = model.get_output_embeddings()  # type: ignore[operator]
        return cls(
            embed=decoder.embed_tokens.weight.detach().to(dtype),
            layers=tuple(layers),
            norm=decoder.norm.weight.detach().to(dtype),
            lm_head=Projection(lm_head.weight.detach().to(dtype), cast(lm_head.bias), pack=pack),
            rotary=decoder.rotary_emb,
            act=first.mlp.act_fn,
            num_heads=int(config.num_attention_heads),
            kv_heads=int(config.num_key_value_heads),
            head_dim=head_dim,
            eps=float(config.rms_norm_eps),
            scaling=float(getattr(first.self_attn, "scaling", head_dim**-0.5)),
            layer_prefix=_layer_prefix(model, decoder.layers),
            dtype=dtype,
            device=device,
        )


def _bias(linear: nn.Linear) -> torch.Tensor:
    return linear.bias.detach() if linear.bias is not None else linear.weight.new_zeros(linear.out_features)


def _check_attention(config: Any) -> None:
    """Refuse attention this decoder does not implement (sliding windows, soft-capping, ...)."""
    layer_types = set(getattr(config, "layer_types", None) or ["full_attention"])
    window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
    context = int(getattr(config, "max_position_embeddings", 0) or 0)
    if layer_types != {"full_attention"} or (window is not None and window < context):
        raise ModelLoadError(
            f"the decoder implements full causal attention only; this model uses layer types "
            f"{sorted(layer_types)} with sliding window {window}"
        )
    if getattr(config, "attn_logit_softcapping", None) or getattr(config, "final_logit_softcapping", None):
        raise ModelLoadError("the decoder does not implement attention or logit soft-capping")


def _layer_prefix(model: nn.Module, layers: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is layers:
            return name
    raise ModelLoadError("cannot find the decoder layers among the model's modules")
