"""Pairwise feedback: POST/GET/DELETE /v1/users/{id}/feedback[/{feedback_id}], POST /v1/users/{id}/duel.

The user's own key, or an admin's key for any user. A feedback post scores the pair, stores it and
refits the profile (:mod:`app.feedback`); a duel generates two answers to compare (:mod:`app.duels`).
Feedback posts have their own per-key rate limit on top of the general one (each scores two answers
and fits); a duel counts as ``duel_candidates x duel_samples`` generations (``Settings.duel_generations``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool

from app.deps import CurrentUser, RuntimeDep, ServicesDep, require_self_or_admin, take_rate
from app.duels import plan_duel, run_duel
from app.errors import APIError, error_responses
from app.feedback import (
    ActiveHeads,
    Refit,
    after_deletion,
    check_pair,
    check_personalization,
    feedback_store,
    record_feedback,
    refit,
    remove_expired_texts,
    score_pair,
)
from app.feedback_schemas import (
    DuelIn,
    DuelOut,
    FeedbackDeleted,
    FeedbackIn,
    FeedbackList,
    FeedbackOut,
    FeedbackResult,
    FitOut,
)
from app.schemas import ProfileOut
from app.services import Services
from personalize.db.errors import NotFoundError
from personalize.db.records import FeedbackRecord, ProfileRecord

router = APIRouter(prefix="/v1/users", tags=["feedback"])
LIST_LIMIT = 500


def feedback_out(record: FeedbackRecord) -> FeedbackOut:
    return FeedbackOut(
        id=record.id,
        created_at=record.created_at.isoformat(),
        prompt=record.prompt,
        chosen=record.chosen,
        rejected=record.rejected,
        texts_removed=record.texts_removed_at is not None,
        scores={name: list(pair) for name, pair in record.scores.items()},
        rewards=dict(record.rewards),
        head_versions=dict(record.head_versions),
        chosen_personalization=dict(record.chosen_personalization) if record.chosen_personalization else None,
        rejected_personalization=dict(record.rejected_personalization) if record.rejected_personalization else None,
    )


def fit_out(result: Refit) -> FitOut:
    fit = result.fit
    return FitOut(
        comparisons=fit.comparisons,
        objectives=list(fit.objectives),
        ignored=list(result.ignored),
        utility={name: round(float(u), 6) for name, u in zip(fit.objectives, fit.utility, strict=True)},
        stderr={name: round(float(e), 6) for name, e in zip(fit.objectives, fit.stderr, strict=True)},
        weights=dict(result.weights),
    )


def profile_out(profile: ProfileRecord) -> ProfileOut:
    return ProfileOut(**profile.to_json())


def _check_user(services: Services, user_id: str) -> None:
    try:
        services.users.get(user_id)
    except NotFoundError as exc:
        raise APIError(404, str(exc), type="not_found_error", code="user_not_found") from exc


def _limit_feedback(request: Request, services: Services) -> None:
    limit = services.settings.feedback_rate_limit_per_minute
    take_rate(
        services,
        f"feedback:{request.state.key_id[:16]}",
        limit,
        lambda retry: f"feedback rate limit of {limit} posts per minute exceeded; retry in {retry} s",
    )


def _post(services: Services, user_id: str, body: FeedbackIn) -> FeedbackResult:
    """Check, score, store, refit (blocking)."""
    _check_user(services, user_id)
    check_pair(body.prompt, body.chosen, body.rejected)
    active = ActiveHeads.of(services.heads.active_versions()).objectives
    check_personalization(body.chosen_personalization, active, "chosen_personalization")
    check_personalization(body.rejected_personalization, active, "rejected_personalization")
    item = score_pair(services, body.prompt, body.chosen, body.rejected)
    chosen, rejected = body.chosen_personalization, body.rejected_personalization
    item = replace(
        item,
        chosen_personalization=chosen.model_dump(exclude_none=True) if chosen else None,
        rejected_personalization=rejected.model_dump(exclude_none=True) if rejected else None,
    )
    record = record_feedback(services, user_id, item)
    result = refit(services, user_id)
    return FeedbackResult(feedback=feedback_out(record), fit=fit_out(result), profile=profile_out(result.profile))


@router.post("/{user_id}/feedback", responses=error_responses(401, 403, 404, 409, 413, 422, 429, 503))
async def post_feedback(
    user_id: str, body: FeedbackIn, request: Request, user: CurrentUser, services: ServicesDep
) -> FeedbackResult:
    """Record that `chosen` is a better answer to `prompt` than `rejected`. Both are scored under every
    active objective, the comparison is stored, and the user's weights are refitted from all their
    comparisons and written as a new profile version (`source: feedback`)."""
    require_self_or_admin(user, user_id)
    _limit_feedback(request, services)
    return await run_in_threadpool(_post, services, user_id, body)


def _list(services: Services, user_id: str, limit: int, before: int | None) -> FeedbackList:
    _check_user(services, user_id)
    remove_expired_texts(services)
    store = feedback_store(services)
    records = store.list(user_id, limit=limit + 1, before_id=before)
    data = [feedback_out(r) for r in records[:limit]]
    return FeedbackList(data=data, total=store.count(user_id), has_more=len(records) > limit)


@router.get("/{user_id}/feedback", responses=error_responses(401, 403, 404, 422, 429, 503))
async def list_feedback(
    user_id: str,
    user: CurrentUser,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=LIST_LIMIT)] = 100,
    before: Annotated[int | None, Query(ge=1, description="Only comparisons older than this id.")] = None,
) -> FeedbackList:
    """The user's comparisons, newest first."""
    require_self_or_admin(user, user_id)
    return await run_in_threadpool(_list, services, user_id, limit, before)


def _deleted(services: Services, user_id: str, count: int) -> FeedbackDeleted:
    after = after_deletion(services, user_id)
    fit = fit_out(after.refit) if after.refit is not None else None
    return FeedbackDeleted(deleted=count, profile=profile_out(after.profile), fit=fit)


def _delete_one(services: Services, user_id: str, feedback_id: int) -> FeedbackDeleted:
    _check_user(services, user_id)
    if not feedback_store(services).delete(user_id, feedback_id):
        raise APIError(
            404, f"user {user_id!r} has no feedback {feedback_id}", type="not_found_error", code="feedback_not_found"
        )
    return _deleted(services, user_id, 1)


def _delete_all(services: Services, user_id: str) -> FeedbackDeleted:
    _check_user(services, user_id)
    services.duel_memory.forget(user_id)
    return _deleted(services, user_id, feedback_store(services).delete_all(user_id))


@router.delete("/{user_id}/feedback/{feedback_id}", responses=error_responses(401, 403, 404, 409, 429, 503))
async def delete_feedback(user_id: str, feedback_id: int, user: CurrentUser, services: ServicesDep) -> FeedbackDeleted:
    """Delete one comparison; a fitted profile is refitted from the rest (back to its manual weights if none)."""
    require_self_or_admin(user, user_id)
    return await run_in_threadpool(_delete_one, services, user_id, feedback_id)


@router.delete("/{user_id}/feedback", responses=error_responses(401, 403, 404, 409, 429, 503))
async def delete_all_feedback(user_id: str, user: CurrentUser, services: ServicesDep) -> FeedbackDeleted:
    """Delete every comparison of the user; a fitted profile goes back to its last manual weights."""
    require_self_or_admin(user, user_id)
    return await run_in_threadpool(_delete_all, services, user_id)


def _limit_duel(request: Request, services: Services, generations: int) -> None:
    """Count the duel's generations after the first (counted on sign-in) against the per-key rate limit."""
    for _ in range(generations - 1):
        take_rate(
            services,
            request.state.key_id[:16],
            services.settings.rate_limit_per_minute,
            lambda _: f"rate limit exceeded: a duel counts as {generations} requests (one per candidate answer)",
        )


@router.post("/{user_id}/duel", responses=error_responses(401, 403, 404, 413, 422, 429, 503, 504))
async def duel(
    user_id: str, body: DuelIn, request: Request, user: CurrentUser, services: ServicesDep, runtime: RuntimeDep
) -> DuelOut:
    """Two answers to `prompt` to choose between: say which is better with POST /v1/users/{id}/feedback.
    `duel_samples` answers for each of `duel_candidates` weight vectors, steered either side of the profile
    along the directions the user's choices have pinned down least, are generated in one batch and scored
    under every active objective; of them and the answers of the user's earlier duels on the same prompt,
    the pair whose choice is expected to teach the fit the most (and that was not shown before) is returned.
    Counts as `duel_candidates x duel_samples` generations (rate limit, in-flight slots, work cap)."""
    require_self_or_admin(user, user_id)
    if services.draining:
        raise APIError(503, "the server is shutting down", type="server_error", code="shutting_down")
    generations = services.settings.duel_generations
    _limit_duel(request, services, generations)
    leases = [services.in_flight.acquire(request.state.key_id)]
    try:
        leases += [services.in_flight.acquire(request.state.key_id) for _ in range(generations - 1)]
        await run_in_threadpool(_check_user, services, user_id)
        plan = await run_in_threadpool(plan_duel, services, runtime, user_id, body)
        return await run_duel(services, runtime, plan, body)
    finally:
        for lease in leases:
            lease.release()
