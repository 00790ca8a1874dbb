"""The reward protocol and the small helpers every reward family shares.

A reward scores finished responses: ``reward(prompts, responses)`` returns a float32
tensor of shape ``(N,)``, one score per (prompt, response) pair. Rewards are batched,
offline (nothing is downloaded) and deterministic (same input, same scores).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from personalize.errors import RewardError

# A plain scorer may return a tensor, an array or a list of N numbers.
ScoreFn = Callable[[Sequence[str], Sequence[str]], Any]

UNBOUNDED: tuple[float, float] = (-math.inf, math.inf)


@runtime_checkable
class RewardFunction(Protocol):
    """A named, documented scoring function over (prompt, response) pairs."""

    name: str
    description: str  # what it measures
    value_range: tuple[float, float]  # (low, high); infinite where unbounded

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """Score each pair; float32 tensor of shape (N,)."""
        ...


PrefixScoreFn = Callable[[Sequence[str], Sequence[str]], torch.Tensor]


def prefix_scorer(reward: RewardFunction) -> PrefixScoreFn:
    """How to score unfinished responses (response prefixes) for reward shaping.

    A reward may define ``prefix_score(prompts, prefixes)``: the same kind of score for text
    that is still being written, without the terms that only make sense for a finished
    answer (a penalty for stopping mid-sentence would be charged at nearly every prefix and
    refunded one token later). Without it, prefixes are scored like finished responses.
    """
    method = getattr(reward, "prefix_score", None)
    return method if callable(method) else reward


def check_batch(name: str, prompts: Sequence[str], responses: Sequence[str]) -> None:
    """Raise RewardError unless ``prompts`` and ``responses`` are equally long lists of str."""
    if isinstance(prompts, str) or isinstance(responses, str):
        raise RewardError(f"reward {name!r} takes sequences of strings, got a single str; wrap it in a list")
    if len(prompts) != len(responses):
        raise RewardError(
            f"reward {name!r} got {len(prompts)} prompts but {len(responses)} responses; pass one prompt per response"
        )
    for kind, texts in (("prompt", prompts), ("response", responses)):
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise RewardError(f"reward {name!r}: {kind} {i} is {type(text).__name__}, expected str")


def as_scores(name: str, values: object, n: int) -> torch.Tensor:
    """Convert a scorer's output to a float32 CPU tensor of shape (n,), or raise RewardError."""
    try:
        scores = torch.as_tensor(values, dtype=torch.float32).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise RewardError(f"reward {name!r} returned {type(values).__name__}, expected a tensor of {n} floats") from exc
    if scores.shape != (n,):
        scores = scores.reshape(-1) if scores.numel() == n else scores
    if scores.shape != (n,):
        raise RewardError(
            f"reward {name!r} returned shape {tuple(scores.shape)}, expected ({n},): one score per response"
        )
    if n and not bool(torch.isfinite(scores).all()):
        raise RewardError(f"reward {name!r} returned a non-finite score: {scores.tolist()}")
    return scores


class CallableReward:
    """Adapts a plain ``(prompts, responses) -> scores`` callable to :class:`RewardFunction`.

    The output is checked (shape ``(N,)``, finite) and converted to float32; an exception the
    callable raises comes back as a RewardError naming the reward.
    """

    def __init__(
        self,
        name: str,
        fn: ScoreFn,
        description: str = "",
        value_range: tuple[float, float] = UNBOUNDED,
    ) -> None:
        self.name = name
        self.description = description or (fn.__doc__ or "").strip() or f"custom reward {name!r}"
        self.value_range = value_range
        self._fn = fn

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        check_batch(self.name, prompts, responses)
        if not responses:
            return torch.zeros(0, dtype=torch.float32)
        try:
            values = self._fn(list(prompts), list(responses))
        except RewardError:
            raise
        except Exception as exc:  # a user's function: whatever it raised, say which reward it was
            raise RewardError(f"reward {self.name!r} raised {type(exc).__name__}: {exc}") from exc
        return as_scores(self.name, values, len(responses))

    def __repr__(self) -> str:
        return f"CallableReward(name={self.name!r})"
