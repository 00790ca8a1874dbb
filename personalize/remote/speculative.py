"""Speculative value-guided sampling: accept the upstream's proposals so that the text follows p.

Per position, over the upstream's top-k T with raw log-probabilities l (DESIGN.md §5):

    q(a) ∝ exp(l(a) / tau)               what the upstream sampled from
    p(a) ∝ exp((l(a) + bonus(a)) / tau)  the VAS target, bonus = beta · Σ_k w_k z_k over T

The proposed token x is accepted with probability min(1, p(x) / q(x)); at the first rejection a
replacement is drawn from the residual max(0, p − q) (normalised) and the rest of the chunk is
dropped. Then P(emit a) = min(q(a), p(a)) + (1 − Σ_b min(q(b), p(b))) · r(a) = p(a): exact.
At temperature 0 both are argmaxes: x is accepted iff it is the argmax of p, else replaced by it.

Dimension letters: P positions (every position of every scored chunk), C candidates (the top-k).
Pure tensor code: no randomness of its own (the uniforms come in), no device sync.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch


class Verdicts(NamedTuple):
    """What the test decided at every position (each chunk is then cut at its first rejection)."""

    accept: torch.Tensor  # (P,) bool: the proposed token passes
    replacement: torch.Tensor  # (P,) int64: the residual's draw (used at the first rejection)
    logprob: torch.Tensor  # (P,) log p of the proposed token (see ``reported``)
    replacement_logprob: torch.Tensor  # (P,) log p of the replacement
    overlap: torch.Tensor  # (P,) Σ_a min(p, q): the acceptance probability at this position
    reported: torch.Tensor  # (P, C) log p over the candidates as reported (greedy positions: temperature 1)


def distributions(
    top_logprobs: torch.Tensor, bonus: torch.Tensor, temperature: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """q and p over the candidates (P, C) each; padding (-inf log-probability) gets 0.

    Greedy positions (temperature 0) get one-hot distributions on their argmax."""
    greedy = (temperature == 0).unsqueeze(-1)  # (P, 1)
    tau = temperature.clamp_min(1e-6).unsqueeze(-1)  # (P, 1)
    base = top_logprobs.float()  # (P, C)
    guided = base + bonus.float()  # (P, C); padding stays -inf
    q = torch.softmax(base / tau, dim=-1)  # (P, C)
    p = torch.softmax(guided / tau, dim=-1)  # (P, C)
    q_greedy = torch.nn.functional.one_hot(base.argmax(-1), base.shape[-1]).float()  # (P, C)
    p_greedy = torch.nn.functional.one_hot(guided.argmax(-1), base.shape[-1]).float()
    return torch.where(greedy, q_greedy, q), torch.where(greedy, p_greedy, p)


def verify(
    top_ids: torch.Tensor,
    top_logprobs: torch.Tensor,
    proposed: torch.Tensor,
    bonus: torch.Tensor,
    temperature: torch.Tensor,
    u_accept: torch.Tensor,
    u_residual: torch.Tensor,
) -> Verdicts:
    """The acceptance test at every position.

    top_ids/top_logprobs/bonus (P, C), proposed (P,) token ids (each among its position's top_ids),
    temperature (P,), u_accept/u_residual (P,) uniforms in [0, 1).
    """
    q, p = distributions(top_logprobs, bonus, temperature)  # (P, C) each
    hit = (top_ids == proposed.unsqueeze(-1)).float()  # (P, C): the proposed token's column
    p_x, q_x = (p * hit).sum(-1), (q * hit).sum(-1)  # (P,)
    ratio = torch.where(q_x > 0, p_x / q_x.clamp_min(1e-30), torch.zeros_like(p_x))  # (P,)
    accept = u_accept < ratio.clamp_max(1.0)  # (P,); ratio >= 1 always passes (u < 1)
    residual = (p - q).clamp_min(0.0)  # (P, C)
    mass = residual.sum(-1, keepdim=True)  # (P, 1)
    residual = torch.where(mass > 0, residual / mass.clamp_min(1e-30), p)  # p == q: never used, p is safe
    cdf = residual.cumsum(-1)  # (P, C)
    column = torch.searchsorted(cdf, (u_residual * cdf[:, -1]).unsqueeze(-1), right=True)  # (P, 1)
    column = column.clamp_max(cdf.shape[-1] - 1)
    replacement = top_ids.gather(-1, column).squeeze(-1)  # (P,)
    tau = torch.where(temperature > 0, temperature, torch.ones_like(temperature)).unsqueeze(-1)  # (P, 1)
    log_p = torch.log_softmax((top_logprobs.float() + bonus.float()) / tau, dim=-1)  # (P, C): what is reported
    return Verdicts(
        accept=accept,
        replacement=replacement,
        logprob=(log_p.nan_to_num(neginf=0.0) * hit).sum(-1),
        replacement_logprob=log_p.gather(-1, column).squeeze(-1),
        overlap=torch.minimum(p, q).sum(-1),
        reported=log_p,
    )


def first_rejections(accept: list[bool], lengths: list[int]) -> list[int]:
    """Per chunk (``lengths`` consecutive positions each), how many leading positions were accepted."""
    out, start = [], 0
    for length in lengths:
        run = 0
        while run < length and accept[start + run]:
            run += 1
        out.append(run)
        start += length
    return out


def chunk_length(acceptance: float, *, lower: int = 2, upper: int = 16, tail: float = 0.2) -> int:
    """The chunk length L to ask for, from the observed per-position acceptance rate.

    L is where the chance that the whole chunk is accepted falls to ``tail``: acceptance^L = tail.
    Longer chunks mostly propose tokens that come after a rejection (wasted upstream work); shorter
    ones pay a round trip for few tokens. 0.79 -> 7, 0.5 -> 3, 0.9 -> 16 (bounds [lower, upper]).
    """
    if acceptance >= 1.0:
        return upper
    if acceptance <= 0.0:
        return lower
    return max(lower, min(upper, math.ceil(math.log(tail) / math.log(acceptance))))
