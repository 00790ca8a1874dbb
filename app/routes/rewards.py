"""POST /v1/rewards/score: score responses with the reward functions of the active objectives.

Each objective is scored by the reward its active head names in ``head.json``
(``reward``; the objective's own name when the head names none), resolved as
:mod:`app.served_rewards` allows (never by importing a module the name names).
Scoring runs on a worker thread: rewards are CPU-bound and may load a model on first use.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from app.deps import CurrentUser, ServicesDep
from app.errors import APIError, api_error_for, error_responses
from app.schemas import RewardScoreRequest, RewardScoreResponse
from app.served_rewards import served_reward
from app.services import Services
from personalize.db.records import HeadVersionRecord
from personalize.errors import RewardError
from personalize.rewards import RewardFunction
from personalize.rewards.base import as_scores

router = APIRouter(prefix="/v1/rewards", tags=["rewards"])
ERROR_RESPONSES = error_responses(400, 401, 413, 422, 429, 503)


def _chosen(active: Sequence[HeadVersionRecord], wanted: Sequence[str] | None) -> list[HeadVersionRecord]:
    """The active head versions of ``wanted`` (all of them when None), in the order asked."""
    by_name = {record.objective: record for record in active}
    if wanted is None:
        return sorted(active, key=lambda record: record.objective)
    for i, name in enumerate(wanted):
        if name not in by_name:
            raise APIError(
                422,
                f"objective {name!r} has no active head; active objectives: {', '.join(sorted(by_name)) or '(none)'}",
                param=f"objectives.{i}",
                code="unknown_objective",
            )
    return [by_name[name] for name in dict.fromkeys(wanted)]


def reward_name(record: HeadVersionRecord) -> str:
    """The reward a head was trained on, as its metadata names it (else the objective's name)."""
    return str(record.meta.get("reward") or record.objective)


def _bound(value: float) -> float | None:
    return value if math.isfinite(value) else None


def score(services: Services, body: RewardScoreRequest) -> RewardScoreResponse:
    """Score every response for every chosen objective (blocking: call it on a worker thread)."""
    chosen = _chosen(services.heads.active_versions(), body.objectives)
    prompts = [body.prompt] * len(body.responses)
    scores: dict[str, list[float]] = {}
    ranges: dict[str, list[float | None]] = {}
    rewards: dict[str, str] = {}
    for record in chosen:
        name = reward_name(record)
        try:
            reward: RewardFunction = served_reward(name, services.settings.reward_dir)
            values = as_scores(name, reward(prompts, body.responses), len(body.responses))  # (N,)
        except RewardError as exc:
            raise api_error_for(exc, f"objectives.{record.objective}") from exc
        scores[record.objective] = [float(v) for v in values.tolist()]
        low, high = reward.value_range
        ranges[record.objective] = [_bound(low), _bound(high)]
        rewards[record.objective] = name
    return RewardScoreResponse(
        object="reward_scores",
        objectives=scores,
        ranges=ranges,
        rewards=rewards,
        head_versions={record.objective: record.version for record in chosen},
    )


@router.post("/score", responses=ERROR_RESPONSES)
async def score_responses(body: RewardScoreRequest, _user: CurrentUser, services: ServicesDep) -> RewardScoreResponse:
    """Each response's score under each objective's reward function (higher is better), with each
    reward's range. Use it to compare answers, e.g. a base and a personalized one."""
    return await run_in_threadpool(score, services, body)
