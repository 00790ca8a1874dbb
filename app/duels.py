"""POST /v1/users/{id}/duel: two answers to compare, chosen to teach the fit the most.

The user's comparisons are fitted (without writing anything); ``duel_samples`` answers for each of
``duel_candidates`` weight vectors, the profile's weights plus and minus ``duel_step`` along the
directions the posterior is least sure of (:func:`personalize.feedback.candidate_weights`), are
generated in one batch, scored under every active objective as a feedback post scores them, and the
pair whose choice is expected to shrink the error of the utility's direction the most is returned
(:func:`personalize.feedback.most_informative_pair`), chosen among the new answers and the ones the user's
earlier duels on the same prompt kept (:mod:`app.duel_memory`), never a pair shown before while another is
left; both counts shrink to fit the per-key in-flight limit (``Settings.duel_shape``). A duel is
``duel_generations`` (candidates x samples) generations: it holds that many of its key's in-flight
slots, counts that many times against the per-key rate limit, and its work is checked as
``n = duel_generations``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from fastapi.concurrency import run_in_threadpool

from app.budget import check_work
from app.duel_memory import KeptAnswer, KeptDuels
from app.errors import APIError, api_error_for
from app.feedback import ActiveHeads, feedback_store, fit_profile
from app.feedback_schemas import DuelAnswer, DuelIn, DuelOut
from app.routes.rewards import score
from app.scheduler import QueueFullError, SchedulerStoppedError, Ticket
from app.schemas import RewardScoreRequest
from app.services import ModelRuntime, Services
from personalize.decoding.config import DEFAULT_BETA, GenerationRequest, Personalization, SamplingParams
from personalize.decoding.rng import derive_seed
from personalize.errors import ConfigError, ContextLengthError
from personalize.feedback import UtilityFit, candidate_weights

WEIGHT_DIGITS = 4


@dataclass(frozen=True)
class DuelPlan:
    """The candidate requests of a duel, the fit the pair will be chosen under, and the user's kept answers."""

    user_id: str
    requests: tuple[GenerationRequest, ...]
    objectives: tuple[str, ...]
    fit: UtilityFit
    comparisons: int
    kept: KeptDuels
    """The user's earlier duel answers to this prompt (app/duel_memory.py): the pair is chosen among them too."""


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
    settings = services.settings
    count, samples = settings.duel_shape
    candidates = candidate_weights(fitted.fit, center, count, step=settings.duel_step, rng=rng)  # (C, K)
    prompt_ids = tuple(runtime.base.encode_chat([{"role": "user", "content": body.prompt}]))
    beta = profile.beta if profile.beta > 0 else DEFAULT_BETA
    requests: list[GenerationRequest] = []
    for row in candidates:  # (K,) each, duel_samples answers of each (their seeds differ)
        weights = {name: round(float(w), WEIGHT_DIGITS) for name, w in zip(heads.objectives, row, strict=True)}
        personalization = Personalization(weights=weights, beta=beta, method="vas", top_k=profile.top_k)
        for _ in range(samples):
            sampling = _sampling(services, body, len(requests))
            requests.append(GenerationRequest(prompt_ids, sampling, personalization))
    check_work(requests[0], runtime.engine, settings.max_request_work, copies=len(requests))
    for request in requests:
        try:
            runtime.engine.validate(request)
        except ContextLengthError as exc:
            raise api_error_for(exc, "prompt") from exc
        except ConfigError as exc:
            raise api_error_for(exc) from exc
    kept = services.duel_memory.load(user_id, body.prompt, heads.versions)
    return DuelPlan(user_id, tuple(requests), heads.objectives, fitted.fit, len(records), kept)


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


class Decoded(NamedTuple):
    text: str
    finish_reason: str | None
    head_versions: dict[str, str]


async def _collect(ticket: Ticket) -> Collected:
    parts: list[str] = []
    finish: str | None = None
    async for event in ticket.iter_events():
        parts.append(event.text)
        finish = event.finish_reason or finish
    return Collected("".join(parts), finish)


def candidate_rewards(services: Services, prompt: str, texts: Sequence[str], objectives: Sequence[str]) -> np.ndarray:
    """(C, K) each candidate's reward per objective, scored as a feedback post scores (blocking);
    0 for an objective that has lost its active head since the plan."""
    scored = score(services, RewardScoreRequest(prompt=prompt, responses=list(texts))).objectives
    columns = [scored.get(name, [0.0] * len(texts)) for name in objectives]
    return np.array(columns, dtype=np.float64).T.reshape(len(texts), len(objectives))  # (C, K)


async def _decode(services: Services, runtime: ModelRuntime, plan: DuelPlan) -> list[Decoded]:
    """Decode every candidate together (one batch) within the request deadline."""
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
    return [Decoded(r.text, r.finish_reason, dict(t.head_versions)) for r, t in zip(results, tickets, strict=True)]


def _answer(answer: KeptAnswer) -> DuelAnswer:
    return DuelAnswer(
        text=answer.text,
        finish_reason=answer.finish_reason,
        personalization=answer.personalization,
        head_versions=answer.head_versions,
    )


def _weight(answer: KeptAnswer, objective: str) -> float:
    weights = answer.personalization.get("weights")
    value = weights.get(objective, 0.0) if isinstance(weights, dict) else 0.0
    return float(value) if isinstance(value, int | float) else 0.0


def _direction(objectives: Sequence[str], first: KeptAnswer, second: KeptAnswer) -> dict[str, float]:
    """The unit direction (decoder units) from the second answer's weights to the first's (zeros if equal)."""
    difference = np.array([_weight(first, n) - _weight(second, n) for n in objectives])  # (K,)
    norm = float(np.linalg.norm(difference))
    unit = difference / norm if norm > 0 else difference
    return {name: round(float(d), WEIGHT_DIGITS) for name, d in zip(objectives, unit, strict=True)}


async def run_duel(services: Services, runtime: ModelRuntime, plan: DuelPlan, body: DuelIn) -> DuelOut:
    """Decode the candidates, score them, answer with the most informative pair among them and the user's
    kept answers to the prompt (never a pair already asked), and keep the new answers."""
    decoded = await _decode(services, runtime, plan)
    texts = [d.text for d in decoded]
    rewards = await run_in_threadpool(candidate_rewards, services, body.prompt, texts, plan.objectives)  # (C, K)
    new = [
        KeptAnswer(d.text, d.finish_reason, r.personalization.to_dict(), d.head_versions, tuple(map(float, row)))
        for d, r, row in zip(decoded, plan.requests, rewards, strict=True)
    ]
    everything = np.vstack([plan.kept.rewards(plan.objectives), rewards])  # (N + C, K)
    chosen = plan.kept.choose(plan.fit, new, everything, services.settings.duel_keep)
    await run_in_threadpool(services.duel_memory.store, plan.user_id, body.prompt, chosen.kept)
    return DuelOut(
        prompt=body.prompt,
        answers=[_answer(chosen.first), _answer(chosen.second)],
        direction=_direction(plan.objectives, chosen.first, chosen.second),
        variance=chosen.pair.variance,
        gain=chosen.pair.gain,
        candidates=len(plan.requests),
        kept=len(plan.kept.answers),
        comparisons=plan.comparisons,
    )
