"""Checks on a head's metadata and weight files made before anything is allocated from them.

``head.json`` says how big the head's tensors are; an uploaded head could claim a
hidden size of a billion. So, before a tensor is built or a weight file loaded:

1. the metadata's sizes are bounded (hidden size, value rank, LoRA rank) and,
   given the serving base model, the hidden size must be the base model's;
2. each safetensors file's header (read without loading a tensor) must list
   exactly the tensors the metadata implies, with those shapes and a float dtype
   (adapter tensors: the configured rank, and the base model's layer sizes);

and after loading, every tensor must be finite (no NaN or infinity).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError, safe_open

from personalize.errors import HeadFormatError
from personalize.lora import PEFT_PREFIX

if TYPE_CHECKING:
    from personalize.heads import HeadMeta

MAX_HIDDEN_SIZE = 65_536
MAX_VALUE_RANK = 256
MAX_LORA_RANK = 256
FLOAT_DTYPES = frozenset({"F32", "F16", "BF16"})
Shape = tuple[int, ...]


def check_meta_sizes(meta: HeadMeta, base_hidden_size: int | None = None) -> None:
    """Refuse sizes out of bounds, or a hidden size other than the base model's."""
    if not isinstance(meta.hidden_size, int) or not 1 <= meta.hidden_size <= MAX_HIDDEN_SIZE:
        raise HeadFormatError(f"hidden_size must be an integer in [1, {MAX_HIDDEN_SIZE}], got {meta.hidden_size!r}")
    if base_hidden_size is not None and meta.hidden_size != base_hidden_size:
        raise HeadFormatError(f"head hidden size {meta.hidden_size} != backbone hidden size {base_hidden_size}")
    if not isinstance(meta.value_rank, int) or not 0 <= meta.value_rank <= MAX_VALUE_RANK:
        raise HeadFormatError(f"value_rank must be an integer in [0, {MAX_VALUE_RANK}], got {meta.value_rank!r}")
    if meta.lora is not None and not (isinstance(meta.lora.rank, int) and 1 <= meta.lora.rank <= MAX_LORA_RANK):
        raise HeadFormatError(f"lora.rank must be an integer in [1, {MAX_LORA_RANK}], got {meta.lora.rank!r}")


def value_shapes(meta: HeadMeta) -> dict[str, Shape]:
    """The tensors of a value output as :class:`personalize.heads.TokenValueOutput` names them."""
    h, r, k = meta.hidden_size, meta.value_rank, len(meta.budget_scales)
    shapes: dict[str, Shape] = {"down.weight": (r, h), "up.weight": (h, r), "state.weight": (1, h), "bias": ()}
    if k:
        shapes.update({"budget_dir": (k, h), "budget_bias": (k,)})
    return shapes


def header(path: Path) -> dict[str, tuple[Shape, str]]:
    """Name -> (shape, dtype) of every tensor in a safetensors file, from its header alone."""
    if not path.is_file():
        raise HeadFormatError(f"missing {path.name}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            entries = {}
            for name in handle.keys():  # noqa: SIM118  # a safetensors handle, not a dict
                piece = handle.get_slice(name)
                entries[name] = (tuple(int(d) for d in piece.get_shape()), str(piece.get_dtype()))
            return entries
    except (SafetensorError, OSError, ValueError) as exc:
        raise HeadFormatError(f"{path.name} is not a valid safetensors file: {exc}") from exc


def _check_dtypes(path: Path, entries: Mapping[str, tuple[Shape, str]]) -> None:
    for name, (_shape, dtype) in entries.items():
        if dtype not in FLOAT_DTYPES:
            allowed = ", ".join(sorted(FLOAT_DTYPES))
            raise HeadFormatError(f"{path.name}: tensor {name} is {dtype}; heads hold {allowed}")


def check_value_file(path: Path, meta: HeadMeta) -> None:
    entries = header(path)
    _check_dtypes(path, entries)
    got = {name: shape for name, (shape, _dtype) in entries.items()}
    expected = value_shapes(meta)
    if got != expected:
        raise HeadFormatError(
            f"{path.name} tensors {got} do not match hidden={meta.hidden_size}, rank={meta.value_rank}, "
            f"budget features={len(meta.budget_scales)} (expected {expected})"
        )


def check_adapter_file(path: Path, meta: HeadMeta, layers: Mapping[str, tuple[int, int]] | None = None) -> None:
    """Adapter tensors: peft names, the configured rank, and (with ``layers``: module -> (in, out)) the
    base model's layer sizes."""
    assert meta.lora is not None
    rank = meta.lora.rank
    entries = header(path)
    _check_dtypes(path, entries)
    if not entries:
        raise HeadFormatError(f"{path.name} holds no tensors")
    for name, (shape, _dtype) in entries.items():
        part = "A" if name.endswith(".lora_A.weight") else "B" if name.endswith(".lora_B.weight") else None
        if part is None or not name.startswith(PEFT_PREFIX) or len(shape) != 2:
            raise HeadFormatError(f"{path.name}: unexpected tensor {name} {shape}; expected peft lora_A/lora_B weights")
        module = name[len(PEFT_PREFIX) : -len(".lora_A.weight")]
        if (shape[0] if part == "A" else shape[1]) != rank:
            raise HeadFormatError(f"{path.name}: {name} has shape {shape}, not rank {rank}")
        if layers is not None:
            if module not in layers:
                raise HeadFormatError(f"adapter targets {module!r}, which is not a linear layer of this backbone")
            in_features, out_features = layers[module]
            wanted = (rank, in_features) if part == "A" else (out_features, rank)
            if shape != wanted:
                raise HeadFormatError(f"{path.name}: {name} has shape {shape}; this backbone needs {wanted}")
        elif max(shape) > 4 * MAX_HIDDEN_SIZE:
            raise HeadFormatError(f"{path.name}: {name} has shape {shape}, larger than any supported backbone")


def check_finite(tensors: Mapping[str, torch.Tensor], file_name: str) -> None:
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise HeadFormatError(f"{file_name}: tensor {name} holds NaN or infinite values")
