"""Fit one head on scored rollouts, whatever its kind: the checks every kind shares, then its trainer.

fit_head(base, data, target, config)   value heads by TD(lambda) (:mod:`personalize.training.td`),
                                       implicit heads by fine-tuning (:mod:`personalize.training.implicit`)
train_head(base, rollouts, scores, objective, out_dir, ...)   the same with every input as its own argument
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from personalize.errors import ConfigError
from personalize.heads import ValueHead
from personalize.models import BaseModel
from personalize.training.config import TrainConfig, TrainReport
from personalize.training.implicit import train_implicit_head
from personalize.training.rollouts import Rollout
from personalize.training.scored import HeadTarget, ScoredRollouts
from personalize.training.shaping import charge_unfinished
from personalize.training.td import check_init, train_value_head

StepFn = Callable[[int, int, float], None]
DEFAULT_CONFIG = TrainConfig()


def fit_head(
    base: BaseModel,
    data: ScoredRollouts,
    target: HeadTarget,
    config: TrainConfig,
    *,
    init: ValueHead | None = None,
    resume: bool = True,
    on_step: StepFn | None = None,
) -> tuple[ValueHead, TrainReport]:
    """Train one head on ``data`` and save it to ``target.out_dir`` (see :class:`ScoredRollouts` for the inputs).

    ``init`` warm-starts a value head; ``resume`` continues a value head from its per-epoch checkpoint.
    ``implicit`` heads are not value heads: they are fine-tuned on the best rollouts instead (no
    checkpoints). ``config.unfinished_penalty`` is charged here, for either kind.
    """
    if init is not None:
        check_init(init, config, base.hidden_size)
    if config.budget_scales and data.horizon is None:
        raise ConfigError("a budget-aware head needs the rollouts' token limit (horizon)")
    n = len(data.rollouts)
    if config.stop_option and (data.stop_rewards is None or len(data.stop_rewards) != n):
        have = "none" if data.stop_rewards is None else str(len(data.stop_rewards))
        raise ConfigError(f"the stopping option needs one stop-reward map per rollout, got {have} for {n}")
    if config.unfinished_penalty:
        scores, paid = charge_unfinished(data.rollouts, data.scores, data.action_rewards, config.unfinished_penalty)
        data = ScoredRollouts(data.rollouts, scores, paid, data.stop_rewards, data.horizon)
    if config.kind == "implicit":
        return train_implicit_head(base, data, target, config, on_step=on_step)
    return train_value_head(base, data, target, config, init=init, resume=resume, on_step=on_step)


def train_head(
    base: BaseModel,
    rollouts: Sequence[Rollout],
    scores: Sequence[float],
    objective: str,
    out_dir: Path,
    *,
    reward_name: str,
    config: TrainConfig = DEFAULT_CONFIG,
    description: str = "",
    version: str = "1",
    extra_meta: Mapping[str, Any] | None = None,
    resume: bool = True,
    on_step: StepFn | None = None,
    action_rewards: Sequence[Sequence[float]] | None = None,
    init: ValueHead | None = None,
    horizon: int | None = None,
    stop_rewards: Sequence[Mapping[int, float]] | None = None,
) -> tuple[ValueHead, TrainReport]:
    """:func:`fit_head` with its inputs spelled out one by one (the form scripts and tests use)."""
    data = ScoredRollouts(rollouts, scores, action_rewards, stop_rewards, horizon)
    target = HeadTarget(objective, Path(out_dir), reward_name, description, version, dict(extra_meta or {}))
    return fit_head(base, data, target, config, init=init, resume=resume, on_step=on_step)
