"""Rewards derived from stored rollouts, computed once and kept in the artifact store beside them.

Scoring every sentence-end prefix takes minutes on a CPU, and training several heads (or the same
head with other epochs or learning rates) on the same rollouts needs the same rewards. Each is
stored under a key of the rollout files, the reward's name and description, the package version
and what else decides it (the shaping mode and the final scores), so a reward that scores
differently is never served another reward's rewards.
"""

from __future__ import annotations

from pathlib import Path

from personalize import __version__
from personalize.errors import ConfigError
from personalize.models import BaseModel
from personalize.rewards import RewardFunction
from personalize.store import ArtifactStore
from personalize.training.config import ShapingMode
from personalize.training.rollouts import Rollout
from personalize.training.shaping import shaped_rewards
from personalize.training.stopping import stop_scores


def stored_shaping(
    store: ArtifactStore,
    rollouts: list[Rollout],
    scores: list[float],
    scorer: RewardFunction,
    base: BaseModel,
    mode: ShapingMode,
    files: list[Path],
) -> list[list[float]]:
    """Shaped per-action rewards of ``rollouts`` (read from ``files``), computed once and then read back."""
    material = [scorer.name, scorer.description, mode, __version__, scores]
    # the key holds the scores, one per rollout: a stored file has one reward list each
    rewards: list[list[float]] = store.derived(
        "shaping",
        files,
        material,
        f"{mode}-shaped rewards",
        f"scoring prefixes ({mode})",
        lambda advance: shaped_rewards(
            rollouts, scores, scorer, base.decode, base.eos_token_ids[0], mode=mode, on_scored=advance
        ),
    )
    return rewards


def stored_stop_scores(
    store: ArtifactStore, rollouts: list[Rollout], scorer: RewardFunction, base: BaseModel, files: list[Path]
) -> list[dict[int, float]]:
    """The reward of each rollout's answer ended at each of its sentence ends (the stopping option)."""
    material = [scorer.name, scorer.description, "stop", __version__]
    maps: list[dict[str, float]] = store.derived(
        "stops",
        files,
        material,
        "stop rewards at sentence ends",
        "scoring answers ended at sentence ends",
        lambda advance: [
            {str(j): v for j, v in m.items()} for m in stop_scores(rollouts, scorer, base.decode, on_scored=advance)
        ],
    )
    if len(maps) != len(rollouts):
        stored = files[-1].parent / "stops-*.json"
        raise ConfigError(f"{stored} holds {len(maps)} stop-reward maps for {len(rollouts)} rollouts; delete it")
    return [{int(j): float(v) for j, v in m.items()} for m in maps]
