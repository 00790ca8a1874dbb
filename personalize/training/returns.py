"""TD(lambda) targets, computed backwards GAE-style over each response."""

from __future__ import annotations

import torch


def lambda_returns(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float = 1.0, lam: float = 0.95
) -> torch.Tensor:
    """Lambda-returns ``G_t`` for every response token.

    rewards, values, mask: (B, T) with ``values[:, t] = Q(s_t, a_t)`` (the taken token's
    value) and ``mask`` 1 on real tokens (a right-padded prefix of each row).
    Past the last real token the value is 0 (terminal)::

        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}
        G_t     = A_t + V_t

    Returns (B, T), zero on padding. No gradient flows through the targets.
    """
    rewards, values, mask = rewards.float(), values.detach().float(), mask.float()
    B, T = values.shape
    values = values * mask
    next_value = torch.cat([values[:, 1:], values.new_zeros(B, 1)], dim=1) * torch.cat(
        [mask[:, 1:], mask.new_zeros(B, 1)], dim=1
    )  # (B, T): V_{t+1}, 0 after the last token
    deltas = (rewards + gamma * next_value - values) * mask  # (B, T)
    advantages = torch.zeros_like(values)
    running = values.new_zeros(B)
    for t in reversed(range(T)):  # T is the response length: a short Python loop, outside decoding
        running = deltas[:, t] + gamma * lam * running * mask[:, t]
        advantages[:, t] = running
    return (advantages + values) * mask
