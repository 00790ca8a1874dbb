"""POST /v1/users/{id}/duel: two answers to compare, steered to teach the fit the most.

The user's comparisons are fitted (without writing anything) and the two weight vectors are the
profile's weights plus and minus ``duel_step`` along the direction the posterior is least sure of
(:func:`personalize.feedback.duel_weights`). A duel is two generations: it holds two of its key's
in-flight slots, counts twice against the per-key rate limit, and its work is checked as ``n = 2``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from app.budget import check_work
from app.errors import APIError, api_error_for
from app.feedback import ActiveHeads, feedback_store, fit_profile
from app.feedback_schemas import DuelAnswer, DuelIn, DuelOut
from app.scheduler import QueueFullError, SchedulerStoppedError, Ticket
from app.services import ModelRuntime, Services
from personalize.decoding.config import DEFAULT_BETA, GenerationRequest, Personalization, SamplingParams
from personalize.decoding.rng import derive_seed
from personalize.errors import ConfigError, ContextLengthError
from personalize.feedback import duel_weights

DUEL_ANSWERS = 2
WEIGHT_DIGITS = 4


@dataclass(frozen=True)
class DuelPlan:
    """The two requests of a duel, and why their weights were chosen."""

    requests: tuple[GenerationRequest, ...]
    direction: dict[str, float]
    variance: float
    comparisons: int


def _sampling(services: Services, body: DuelIn, index: int) -> SamplingParams:
    limit = services.settings.max_tokens_limit
    wanted = body.max_tokens if body.max_tokens is not None else min(services.settings.default_max_tokens, limit)
    if wanted > limit:
        raise APIError(422, f"max_tokens is {wanted}; this server allows at most {limit}", param="max_tokens")
    seed = derive_seed(body.seed, index + 1) if body.seed is not None else None
    return SamplingParams(max_new_tokens=wanted, temperature=body.temperature, seed=seed)


def _loaded_heads(services: Services, runtime: ModelRuntime) -> ActiveHeads:
    loaded = set(runtime.engine.objectives)
    heads = ActiveHeads.of([r for r in services.heads.active_versions() if r.objective in loaded])
    if not heads.objectives:
        raise APIError(422, "no objective has an active head: a duel has nothing to steer with", code="no_objectives")
    return heads


def plan_duel(services: Services, runtime: ModelRuntime, user_id: str, body: DuelIn) -> DuelPlan:
    """Fit, choose the two weight vectors, build and check both requests (blocking: database, tokenizer)."""
    heads = _loaded_heads(services, runtime)
    profile = services.profiles.get(user_id)
    records = feedback_store(services).list(user_id)
    fitted = fit_profile(profile, records, heads, services.settings.feedback_l2)
    center = np.array([profile.weights.get(name, 0.0) for name in heads.objectives])
    rng = np.random.default_rng(body.seed)
    duel = duel_weights(fitted.fit, center, step=services.settings.duel_step, rng=rng)
    prompt_ids = tuple(runtime.base.encode_chat([{"role": "user", "content": body.prompt}]))
    beta = profile.beta if profile.beta > 0 else DEFAULT_BETA
    requests = []
    for index, side in enumerate((duel.left, duel.right)):
        weights = {name: round(float(w), WEIGHT_DIGITS) for name, w in zip(heads.objectives, side, strict=True)}
        personalization = Personalization(weights=weights, beta=beta, method="vas", top_k=profile.top_k)
        requests.append(GenerationRequest(prompt_ids, _sampling(services, body, index), personalization))
    check_work(requests[0], runtime.engine, services.settings.max_request_work, copies=DUEL_ANSWERS)
    for request in requests:
        try:
            runtime.engine.validate(request)
        except ContextLengthError as exc:
            raise api_error_for(exc, "prompt") from exc
        except ConfigError as exc:
            raise api_error_for(exc) from exc
    direction = {name: round(float(d), WEIGHT_DIGITS) for name, d in zip(heads.objectives, duel.direction, strict=True)}
    return DuelPlan(tuple(requests), direction, duel.variance, len(records))


def _submit(services: Services, runtime: ModelRuntime, requests: Sequence[GenerationRequest]) -> list[Ticket]:
    tickets: list[Ticket] = []
    try:
        for request in requests:
            tickets.append(runtime.scheduler.submit(request))
    except (QueueFullError, SchedulerStoppedError) as exc:
        for ticket in tickets:
            ticket.cancel()
        if isinstance(exc, QueueFullError):
            services.metrics.rejected.labels("queue_full").inc()
            busy = {"Retry-After": "1"}
            raise APIError(429, str(exc), type="rate_limit_error", code="queue_full", headers=busy) from exc
        raise APIError(503, str(exc), type="server_error", code="shutting_down", headers={"Retry-After": "5"}) from exc
    return tickets


class Collected(NamedTuple):
    text: str
    finish_reason: str | None


async def _collect(ticket: Ticket) -> Collected:
    parts: list[str] = []
    finish: str | None = None
    async for event in ticket.iter_events():
        parts.append(event.text)
        finish = event.finish_reason or finish
    return Collected("".join(parts), finish)


async def run_duel(services: Services, runtime: ModelRuntime, plan: DuelPlan, body: DuelIn) -> DuelOut:
    """Decode both answers together (one batch) within the request deadline."""
    tickets = _submit(services, runtime, plan.requests)
    timeout = services.settings.request_timeout_s or None
    try:
        results = await asyncio.wait_for(asyncio.gather(*map(_collect, tickets)), timeout)
    except TimeoutError as exc:
        raise APIError(504, f"the duel did not finish within {timeout} s", type="server_error", code="timeout") from exc
    except Exception as exc:
        raise APIError(503, f"decoding failed: {exc}", type="server_error", code="decoder_unavailable") from exc
    finally:
        for ticket in tickets:
            ticket.cancel()
    answers = []
    for request, ticket, result in zip(plan.requests, tickets, results, strict=True):
        personalization: dict[str, Any] = request.personalization.to_dict()
        answers.append(
            DuelAnswer(
                text=result.text,
                finish_reason=result.finish_reason,
                personalization=personalization,
                head_versions=dict(ticket.head_versions),
            )
        )
    return DuelOut(
        prompt=body.prompt,
        answers=answers,
        direction=plan.direction,
        variance=plan.variance,
        comparisons=plan.comparisons,
    )
