"""TD(lambda) targets, computed backwards GAE-style over each response."""

from __future__ import annotations

import torch


def lambda_returns(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    gamma: float = 1.0,
    lam: float = 0.95,
    stops: torch.Tensor | None = None,
    stop_values: torch.Tensor | None = None,
) -> torch.Tensor:
    """Lambda-returns ``G_t`` for every response token.

    rewards, values, mask: (B, T) with ``values[:, t] = Q(s_t, a_t)`` (the taken token's
    value) and ``mask`` 1 on real tokens (a right-padded prefix of each row).
    Past the last real token the value is 0 (terminal)::

        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}
        G_t     = A_t + V_t

    ``stops`` (B, T), 1 at the states ``s_t`` where the policy ends the answer instead of taking
    ``a_t``, with ``stop_values`` (B, T) the known return of ending there: there ``V_t`` is that
    return and no trace crosses ``s_t``, so the actions before it are valued as those of a policy
    that stops there (:mod:`personalize.training.stopping`).

    Returns (B, T), zero on padding. No gradient flows through the targets.
    """
    rewards, values, mask = rewards.float(), values.detach().float(), mask.float()
    B, T = values.shape
    values = values * mask
    next_mask = torch.cat([mask[:, 1:], mask.new_zeros(B, 1)], dim=1)
    next_value = torch.cat([values[:, 1:], values.new_zeros(B, 1)], dim=1) * next_mask  # V_{t+1}, 0 after the end
    carry = torch.ones_like(values)  # 0 where the trace stops at s_{t+1}
    if stops is not None:
        if stop_values is None:
            raise ValueError("stops need stop_values")
        ends = torch.cat([stops[:, 1:].float(), stops.new_zeros(B, 1).float()], dim=1) * next_mask
        stop_next = torch.cat([stop_values[:, 1:].float(), stop_values.new_zeros(B, 1).float()], dim=1)
        next_value = torch.where(ends.bool(), stop_next, next_value)
        carry = 1.0 - ends
    deltas = (rewards + gamma * next_value - values) * mask  # (B, T)
    advantages = torch.zeros_like(values)
    running = values.new_zeros(B)
    for t in reversed(range(T)):  # T is the response length: a short Python loop, outside decoding
        running = deltas[:, t] + gamma * lam * running * carry[:, t] * mask[:, t]
        advantages[:, t] = running
    return (advantages + values) * mask
