"""What a trainer is given: scored rollouts, and what the head it makes is and where it goes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from personalize.errors import ConfigError
from personalize.training.rollouts import Rollout


@dataclass(frozen=True)
class ScoredRollouts:
    """Rollouts, one final score each, and optionally per-action rewards and stop rewards.

    ``action_rewards`` (one list per rollout, one reward per action: see
    :mod:`personalize.training.shaping`) replaces the default of the final score on the last action.
    ``stop_rewards`` (per rollout, :func:`personalize.training.stopping.stop_scores`) are what the
    stopping option needs. ``horizon`` is the rollouts' token limit (max_new_tokens): a budget-aware
    head needs it.
    """

    rollouts: Sequence[Rollout]
    scores: Sequence[float]
    action_rewards: Sequence[Sequence[float]] | None = None
    stop_rewards: Sequence[Mapping[int, float]] | None = None
    horizon: int | None = None

    def __post_init__(self) -> None:
        n = len(self.rollouts)
        if n != len(self.scores) or not n:
            raise ConfigError(f"need one score per rollout, got {n} rollouts and {len(self.scores)} scores")
        if self.action_rewards is not None and len(self.action_rewards) != n:
            got = len(self.action_rewards)
            raise ConfigError(f"need one list of action rewards per rollout, got {got} for {n}")


@dataclass(frozen=True)
class HeadTarget:
    """The head a run makes: its objective, version and description, the reward it names, its folder,
    and anything else to record under ``training`` in its ``head.json``."""

    objective: str
    out_dir: Path
    reward_name: str
    description: str = ""
    version: str = "1"
    extra_meta: Mapping[str, Any] = field(default_factory=dict)
