"""Each answer's rewards under the active objectives (``POST /v1/rewards/score``), scored once per Generate
and shown as a row of metrics under the answer."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import streamlit as st

from ui.client import ApiClient, ApiError, Bounds
from ui.streams import Answer


@dataclass(frozen=True)
class AnswerRewards:
    """Label -> objective -> reward of that answer; ``error`` says why there are none."""

    scores: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    ranges: Mapping[str, Bounds] = field(default_factory=dict)
    error: str | None = None


def score_answers(api: ApiClient, prompt: str, answers: Mapping[str, Answer]) -> AnswerRewards:
    """One request for every finished answer; a refusal comes back as ``error``, never raised."""
    scored = [label for label, answer in answers.items() if answer.done and not answer.error]
    if not scored:
        return AnswerRewards()
    try:
        result = api.score_rewards(prompt, [answers[label].text for label in scored])
        return AnswerRewards({label: result.of(i) for i, label in enumerate(scored)}, result.ranges)
    except ApiError as exc:
        return AnswerRewards(error=str(exc))
    except (KeyError, TypeError, ValueError, IndexError) as exc:  # an answer not in the documented shape
        return AnswerRewards(error=f"unexpected answer from the service ({type(exc).__name__}: {exc})")


def _range_help(bounds: Bounds | None) -> str | None:
    if bounds is None:
        return None
    low, high = bounds
    return f"Reward range [{_bound(low, '-inf')}, {_bound(high, 'inf')}]; higher is better."


def _bound(value: float | None, unbounded: str) -> str:
    return unbounded if value is None or math.isinf(value) else f"{value:g}"


def show_rewards(slot: Any, rewards: AnswerRewards, label: str, baseline: str | None = None) -> None:
    """The answer's rewards in ``slot``, each with its difference to the ``baseline`` answer's."""
    scores = rewards.scores.get(label)
    if not scores:
        return
    reference = rewards.scores.get(baseline) if baseline is not None else None
    with slot.container():
        st.caption("Reward per objective" + (" (difference to the base answer)" if reference else ""))
        for column, (name, value) in zip(st.columns(len(scores)), scores.items(), strict=True):
            delta = f"{value - reference[name]:+.3f}" if reference and name in reference else None
            column.metric(name, f"{value:.3f}", delta=delta, help=_range_help(rewards.ranges.get(name)))
