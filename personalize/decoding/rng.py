"""Counter-based random numbers: one reproducible stream per batch row.

A shared ``torch.Generator`` would make a request's sample depend on what else
is in its batch. Instead every row draws ``uniform(seed, step)`` from a
SplitMix64 hash evaluated with int64 tensor ops (wrapping arithmetic), so a
seeded request gives the same text alone or batched, on CPU or GPU, with no
per-row Python loop.
"""

from __future__ import annotations

import math

import torch

_MASK64 = (1 << 64) - 1


def _signed(x: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits."""
    x &= _MASK64
    return x - (1 << 64) if x >= 1 << 63 else x


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)
_NORMAL_SALT = _signed(0xA5A5_D1B5_4A32_D192)  # keeps Gaussian streams apart from the token-sampling uniforms


def _shr(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns (torch's ``>>`` is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64 finaliser on int64 tensors (bit-identical to the unsigned reference)."""
    z = x + _GOLDEN
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    return z ^ _shr(z, 31)


def uniforms(seeds: torch.Tensor, step: int | torch.Tensor) -> torch.Tensor:
    """One uniform float32 in [0, 1) per row: a pure function of (seed, step).

    seeds (S,) int64, step an int or (S,) int64 (each row's own counter) -> (S,).
    """
    z = splitmix64(splitmix64(seeds) + step)  # (S,)
    return _shr(z, 40).to(torch.float32) * (1.0 / (1 << 24))  # 24 random bits: exact in float32


def normals(seeds: torch.Tensor, step: torch.Tensor, dim: int) -> torch.Tensor:
    """``dim`` standard normals per row, a pure function of (seed, step): Box-Muller on counter-based bits.

    seeds (P,) int64, step (P,) int64 -> (P, dim) float32. Independent of the uniforms that sample tokens.
    """
    keys = splitmix64(seeds ^ _NORMAL_SALT)  # (P,)
    counters = step.unsqueeze(-1) * (2 * dim) + torch.arange(2 * dim, device=seeds.device)  # (P, 2·dim)
    bits = splitmix64(keys.unsqueeze(-1) + counters)  # (P, 2·dim)
    u = (_shr(bits, 40).to(torch.float32) + 0.5) * (1.0 / (1 << 24))  # (P, 2·dim) in (0, 1)
    radius = torch.sqrt(-2.0 * torch.log(u[:, :dim]))  # (P, dim)
    return radius * torch.cos((2.0 * math.pi) * u[:, dim:])  # (P, dim)


def derive_seed(seed: int, index: int) -> int:
    """A child seed (e.g. sample i of Best-of-N), as a non-negative int63."""
    z = splitmix64(torch.tensor([seed ^ (index * 0x5851F42D)], dtype=torch.int64))
    return int(z.item()) & ((1 << 63) - 1)


def splitmix64_reference(x: int) -> int:
    """Plain-integer SplitMix64, used by the tests to check the tensor version."""
    z = (x + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)
