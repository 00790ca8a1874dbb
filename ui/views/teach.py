"""Teach me: two answers side by side, the caller says which is better, the weights are refitted after
each choice and plotted over the comparisons. Everything goes through the service's duel and feedback
endpoints (``POST /v1/users/{id}/duel``, ``POST /v1/users/{id}/feedback``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import streamlit as st

from ui import session
from ui.client import ApiClient, ApiError, Duel, DuelAnswer, FeedbackFit, User

DEFAULT_PROMPT = "How do I clean my keyboard?"
DUEL = "teach_duel"
HISTORY = "teach_history"
LAST_FIT = "teach_last_fit"
MAX_TOKENS = 96


def history() -> list[dict[str, float]]:
    """Weights after each comparison of this session, first the profile's as it was."""
    rows = st.session_state.setdefault(HISTORY, [])
    assert isinstance(rows, list)
    return rows


def new_duel(api: ApiClient, user: User, prompt: str) -> None:
    """Ask the service for a pair; a refusal is shown, never raised."""
    try:
        st.session_state[DUEL] = api.duel(user.id, prompt, max_tokens=MAX_TOKENS)
    except ApiError as exc:
        st.session_state.pop(DUEL, None)
        st.error(f"Could not get two answers: {exc}")


def choose(api: ApiClient, user: User, duel: Duel, better: DuelAnswer, worse: DuelAnswer) -> None:
    """Send the choice, record the new weights, and fetch the next pair for the same prompt."""
    try:
        fit = api.send_feedback(user.id, duel.prompt, better, worse)
    except ApiError as exc:
        st.error(f"The choice was not recorded: {exc}")
        return
    st.session_state[LAST_FIT] = fit
    history().append(dict(fit.weights))
    new_duel(api, user, duel.prompt)


def show_answers(duel: Duel) -> None:
    if duel.candidates:
        earlier = f" and {duel.kept} from your earlier pairs on this prompt" if duel.kept else ""
        st.caption(f"The pair that teaches the most, of {duel.candidates} new answers{earlier}.")
    left, right = st.columns(2)
    for column, title, answer in ((left, "Left", duel.left), (right, "Right", duel.right)):
        with column:
            st.subheader(title)
            st.markdown(answer.text or "_(empty answer)_")
            weights = answer.personalization.get("weights") or {}
            st.caption("steered with " + ", ".join(f"{k}={float(v):+.2f}" for k, v in sorted(weights.items())))


def show_choices(api: ApiClient, user: User, duel: Duel) -> None:
    left, right, neither = st.columns(3)
    if left.button("Left is better", key="teach_left", use_container_width=True):
        choose(api, user, duel, duel.left, duel.right)
        st.rerun()
    if right.button("Right is better", key="teach_right", use_container_width=True):
        choose(api, user, duel, duel.right, duel.left)
        st.rerun()
    if neither.button("Neither", key="teach_neither", use_container_width=True):
        new_duel(api, user, duel.prompt)  # nothing is learned from a tie; just another pair
        st.rerun()


def show_weights(fit: FeedbackFit | None, weights: Mapping[str, float]) -> None:
    st.subheader("Your weights")
    if fit is not None:
        st.caption(f"Fitted from {fit.comparisons} choice(s); ± is one standard error of the utility.")
        if fit.ignored:
            st.warning(f"Left out (no active head now): {', '.join(fit.ignored)}")
    names = sorted(weights)
    for column, name in zip(st.columns(max(len(names), 1)), names, strict=False):
        error = fit.stderr.get(name) if fit is not None else None
        column.metric(name, f"{weights[name]:+.3f}", help=None if error is None else f"utility ± {error:.3f}")
    rows = history()
    if len(rows) > 1:
        names = sorted({name for row in rows for name in row})
        chart: dict[str, Any] = {name: [row.get(name, 0.0) for row in rows] for name in names}
        st.caption("Weights over comparisons (this session)")
        st.line_chart(chart)


def main() -> None:
    st.title("Teach me")
    api, user = session.require_user()
    st.write(
        "Pick the better of two answers; the service learns how much you value each objective from your "
        "choices and sets your profile's weights (a slider move on Generate overrides them)."
    )
    if not history():
        history().append(dict(api.profile(user.id).weights))
    prompt = st.text_input("Prompt", value=DEFAULT_PROMPT, key="teach_prompt")
    ask, reset = st.columns(2)
    if ask.button("New pair", key="teach_new", type="primary"):
        new_duel(api, user, prompt.strip())
    if reset.button("Forget my choices", key="teach_reset"):
        profile = api.forget_feedback(user.id)
        st.session_state[HISTORY] = [dict(profile.weights)]
        st.session_state.pop(LAST_FIT, None)
        st.success("Your choices were deleted; the profile is back to its last manual weights.")
    duel = st.session_state.get(DUEL)
    if isinstance(duel, Duel):
        show_answers(duel)
        show_choices(api, user, duel)
    fit = st.session_state.get(LAST_FIT)
    show_weights(fit if isinstance(fit, FeedbackFit) else None, history()[-1])


main()
