"""Pairwise feedback in the service: score a choice, store it, refit the user's weights.

A choice is scored under every active objective by the reward its head names, exactly as
``POST /v1/rewards/score`` scores (:func:`app.routes.rewards.score`), and stored. Then the user's
utility is refitted from all their comparisons (:mod:`personalize.feedback`), pulled toward the
profile's anchor (its last manual weights), and written as a new profile version with
``source="feedback"`` under the profile's optimistic concurrency: a write that lost a race re-reads
the comparisons and the profile and fits again, so concurrent posts never lose a comparison or an
update. Objectives without an active head are left out of the fit (and their weights as they were).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import NamedTuple

import numpy as np

from app.errors import APIError
from app.routes.rewards import score
from app.schemas import PersonalizationIn, RewardScoreRequest
from app.services import Services
from personalize.db import FeedbackStore, NewFeedback
from personalize.db.errors import VersionConflictError
from personalize.db.models import SOURCE_FEEDBACK, SOURCE_MANUAL, utcnow
from personalize.db.records import FeedbackRecord, HeadVersionRecord, ProfileRecord
from personalize.decoding.config import Personalization
from personalize.feedback import FitConfig, UtilityFit, decoder_weights, fit_utility, utility_of_weights

MAX_WRITE_ATTEMPTS = 20
WEIGHT_DIGITS = 6


@dataclass(frozen=True)
class ActiveHeads:
    """The objectives a fit covers, in a fixed order, with what their heads record."""

    objectives: tuple[str, ...]
    scales: np.ndarray
    """(K,) calibration scales (decoder units per value unit)."""
    spreads: np.ndarray
    """(K,) typical reward difference between two answers: sqrt(2) x the training returns' std."""
    versions: tuple[tuple[str, str], ...] = ()
    """(objective, head version) of each objective, in the same order."""

    @classmethod
    def of(cls, records: Sequence[HeadVersionRecord]) -> ActiveHeads:
        ordered = sorted(records, key=lambda r: r.objective)
        scales = [_positive(r.calibration.get("scale"), 1.0) for r in ordered]
        spreads = [math.sqrt(2.0) * _positive(r.calibration.get("return_std"), 1.0) for r in ordered]
        versions = tuple((r.objective, r.version) for r in ordered)
        return cls(tuple(r.objective for r in ordered), np.array(scales), np.array(spreads), versions)


def _positive(value: object, default: float) -> float:
    number = float(value) if isinstance(value, int | float) else default
    return number if math.isfinite(number) and number > 0 else default


@dataclass(frozen=True)
class Refit:
    """One fit and the profile it produced."""

    fit: UtilityFit
    weights: Mapping[str, float]
    ignored: tuple[str, ...]
    profile: ProfileRecord


class FittedWeights(NamedTuple):
    fit: UtilityFit
    weights: dict[str, float]
    """Objective -> decoder weight, for the fitted objectives."""
    ignored: tuple[str, ...]
    """Objectives the comparisons were scored on that have no active head now."""


class AfterDeletion(NamedTuple):
    profile: ProfileRecord
    refit: Refit | None
    """The refit, when the profile was a fitted one and comparisons are left."""


def feedback_store(services: Services) -> FeedbackStore:
    return FeedbackStore(services.db)


def check_pair(prompt: str, chosen: str, rejected: str) -> None:
    """422 for a blank text or two identical answers (nothing to learn from)."""
    for name, text in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
        if not text.strip():
            raise APIError(422, f"{name} is empty or only whitespace", param=name, code="invalid_value")
    if chosen.strip() == rejected.strip():
        raise APIError(
            422,
            "chosen and rejected are the same answer: a choice needs two different answers",
            param="rejected",
            code="invalid_value",
        )


def check_personalization(given: PersonalizationIn | None, active: Sequence[str], param: str) -> None:
    """422 when a stored personalization names an objective with no active head."""
    for name in (given.weights or {}) if given is not None else {}:
        if name not in active:
            raise APIError(
                422,
                f"{param}.weights names objective {name!r}, which has no active head; active objectives: "
                f"{', '.join(active) or '(none)'}",
                param=f"{param}.weights.{name}",
                code="unknown_objective",
            )


def score_pair(services: Services, prompt: str, chosen: str, rejected: str) -> NewFeedback:
    """The pair scored under every active objective (blocking: rewards may load a model)."""
    scored = score(services, RewardScoreRequest(prompt=prompt, responses=[chosen, rejected]))
    if not scored.objectives:
        raise APIError(
            422, "no objective has an active head: there is nothing to score the answers with", code="no_objectives"
        )
    pairs = {name: (values[0], values[1]) for name, values in scored.objectives.items()}
    return NewFeedback(prompt, chosen, rejected, pairs, scored.rewards, scored.head_versions)


def remove_expired_texts(services: Services) -> int:
    """Blank the texts of every comparison past the retention period (any user's)."""
    cutoff = utcnow() - timedelta(days=services.settings.feedback_retention_days)
    return feedback_store(services).remove_texts(cutoff)


def record_feedback(services: Services, user_id: str, item: NewFeedback) -> FeedbackRecord:
    keep = services.settings.feedback_retention_days > 0
    remove_expired_texts(services)
    return feedback_store(services).add(user_id, item, keep_texts=keep)


def _differences(records: Sequence[FeedbackRecord], objectives: Sequence[str]) -> np.ndarray:
    rows = [[record.difference(name) or 0.0 for name in objectives] for record in records]
    return np.array(rows, dtype=np.float64).reshape(len(records), len(objectives))  # (N, K)


def fit_profile(
    profile: ProfileRecord, records: Sequence[FeedbackRecord], heads: ActiveHeads, l2: float
) -> FittedWeights:
    """The fit of ``records`` anchored at the profile's manual weights, and the weights it gives."""
    anchor = np.array([profile.anchor.get(name, 0.0) for name in heads.objectives])
    current = np.array([profile.weights.get(name, 0.0) for name in heads.objectives])
    fit = fit_utility(
        heads.objectives,
        _differences(records, heads.objectives),
        fallback_spread=heads.spreads,
        prior_utility=utility_of_weights(anchor, heads.scales),
        config=FitConfig(l2=l2),
    )
    strength = float(np.linalg.norm(current)) or 1.0
    fitted = decoder_weights(fit.utility, heads.scales, strength)
    weights = {name: round(float(w), WEIGHT_DIGITS) for name, w in zip(heads.objectives, fitted, strict=True)}
    seen = {name for record in records for name in record.scores}
    return FittedWeights(fit, weights, tuple(sorted(seen - set(heads.objectives))))


def _personalization(profile: ProfileRecord, weights: Mapping[str, float]) -> Personalization:
    merged = {**dict(profile.weights), **weights}
    return Personalization(weights=merged, beta=profile.beta, method=profile.method, top_k=profile.top_k)


def refit(services: Services, user_id: str) -> Refit:
    """Fit the user's weights from all their comparisons and write them as a new profile version
    (``source="feedback"``); a write that lost a race to another is redone from a fresh read."""
    heads = ActiveHeads.of(services.heads.active_versions())
    if not heads.objectives:
        raise APIError(422, "no objective has an active head: there is nothing to fit", code="no_objectives")
    store = feedback_store(services)
    for _ in range(MAX_WRITE_ATTEMPTS):
        profile = services.profiles.store.get(user_id)  # the database's version, not the cache's
        records = store.list(user_id)
        fit, weights, ignored = fit_profile(profile, records, heads, services.settings.feedback_l2)
        try:
            written = services.profiles.put(
                user_id, _personalization(profile, weights), profile.version, source=SOURCE_FEEDBACK
            )
        except VersionConflictError:
            continue
        return Refit(fit, weights, ignored, written)
    message = "the profile kept changing while it was refitted; retry"
    raise APIError(409, message, code="version_conflict", headers={"Retry-After": "1"})


def reset_to_anchor(services: Services, user_id: str) -> ProfileRecord:
    """With no comparison left, a fitted profile goes back to its last manual weights."""
    for _ in range(MAX_WRITE_ATTEMPTS):
        profile = services.profiles.store.get(user_id)
        if profile.source != SOURCE_FEEDBACK:
            return profile
        back = Personalization(
            weights=dict(profile.anchor), beta=profile.beta, method=profile.method, top_k=profile.top_k
        )
        try:
            return services.profiles.put(user_id, back, profile.version, source=SOURCE_MANUAL)
        except VersionConflictError:
            continue
    raise APIError(409, "the profile kept changing while it was reset; retry", code="version_conflict")


def after_deletion(services: Services, user_id: str) -> AfterDeletion:
    """Refit a fitted profile from the comparisons left (back to its anchor when none is)."""
    profile = services.profiles.store.get(user_id)
    if profile.source != SOURCE_FEEDBACK:
        return AfterDeletion(profile, None)
    if feedback_store(services).count(user_id) == 0:
        return AfterDeletion(reset_to_anchor(services, user_id), None)
    result = refit(services, user_id)
    return AfterDeletion(result.profile, result)
