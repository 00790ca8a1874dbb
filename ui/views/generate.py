"""Generate: a slider per active objective and the chosen method's parameters; the base and the personalized
answer side by side, streamed, each with its rewards; the token view; save and load the caller's profile."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

import streamlit as st

from ui import session
from ui.client import (
    ApiClient,
    ApiError,
    ConflictError,
    GenerationSettings,
    MethodParam,
    Objective,
    User,
    method_params_from_openapi,
    methods_from_openapi,
)
from ui.rewards import AnswerRewards, score_answers, show_rewards
from ui.streams import Answer, stream_side_by_side
from ui.tokens import legend_html, objective_colours, tokens_html, total_push

WEIGHT_RANGE = (-2.0, 2.0)
BETA_RANGE = (0.0, 10.0)
DEFAULT_PROMPT = "How do I clean my keyboard?"
METHOD_HELP = {
    "base": "plain sampling (ignores the sliders)",
    "vas": "value-guided sampling: every token re-scored by the weighted value heads",
    "bon": "Best-of-N: N plain samples, the best by the weighted objectives' rewards (not streamed)",
    "ivg": "integrated value guidance: token-level implicit value plus chunk-level search",
    "aisp": "adaptive importance sampling in pre-logit space",
}
LABELS = {"base": "Base model", "personalized": "Personalized"}
ANSWERS = "last_answers"
REWARDS = "last_rewards"
PROFILE_VERSION = "profile_version"
FLOAT_STEP = 0.05
Params = Mapping[str, Sequence[MethodParam]]


def weight_key(objective: str) -> str:
    return f"w_{objective}"


def _clamp(value: float, bounds: tuple[float, float]) -> float:
    return min(max(value, bounds[0]), bounds[1])


def load_profile(api: ApiClient, user: User, objectives: Sequence[Objective], methods: Sequence[str]) -> str | None:
    """Put the saved profile into the form's widgets; returns a note when a value had to change."""
    profile = api.profile(user.id)
    notes: list[str] = []
    names = {o.name for o in objectives}
    for name in names:
        weight = profile.weights.get(name, 0.0)
        st.session_state[weight_key(name)] = _clamp(weight, WEIGHT_RANGE)
        if weight != st.session_state[weight_key(name)]:
            notes.append(f"{name}={weight:g} shown as {st.session_state[weight_key(name)]:g} (slider range)")
    skipped = sorted(set(profile.weights) - names)
    if skipped:
        notes.append(f"weights for inactive objectives not shown: {', '.join(skipped)}")
    st.session_state["beta"] = _clamp(profile.beta, BETA_RANGE)
    if profile.method in methods:
        st.session_state["method"] = profile.method
    st.session_state[PROFILE_VERSION] = profile.version
    return "; ".join(notes) or None


def _defaults(objectives: Sequence[Objective], methods: Sequence[str], params: Params) -> None:
    defaults: dict[str, Any] = {
        "prompt": DEFAULT_PROMPT,
        "beta": 2.0,
        "method": "vas" if "vas" in methods else methods[0],
        "max_tokens": 128,
        "temperature": 0.7,
        "seed": 0,
    }
    for inputs in params.values():  # each method's parameters start at the API's defaults
        defaults.update({p.key: int(p.default) if p.is_int else p.default for p in inputs})
    defaults.update({weight_key(o.name): 0.0 for o in objectives})
    for key, value in defaults.items():
        st.session_state.setdefault(key, value)


def _values(inputs: Sequence[MethodParam]) -> dict[str, float]:
    state = st.session_state
    return {p.name: int(state[p.key]) if p.is_int else float(state[p.key]) for p in inputs}


def _settings(objectives: Sequence[Objective], params: Params) -> GenerationSettings:
    state = st.session_state
    best_of = _values(params.get("bon", ())).get("best_of")
    return GenerationSettings(
        weights={o.name: float(state[weight_key(o.name)]) for o in objectives},
        beta=float(state["beta"]),
        method=str(state["method"]),
        max_tokens=int(state["max_tokens"]),
        seed=int(state["seed"]),
        temperature=float(state["temperature"]),
        best_of=None if best_of is None else int(best_of),
        ivg=_values(params["ivg"]) if "ivg" in params else None,
        aisp=_values(params["aisp"]) if "aisp" in params else None,
    )


def _method_picker(methods: Sequence[str]) -> None:
    """Outside the form, so that the chosen method's parameters show up at once."""
    picker, note = st.columns([1, 3])
    with picker:
        st.selectbox(
            "Method",
            list(methods),
            key="method",
            help="\n".join(f"- **{m}**: {METHOD_HELP.get(m, 'offered by this server')}" for m in methods),
        )
    with note:
        method = str(st.session_state["method"])
        st.caption(f"**{method}**: {METHOD_HELP.get(method, 'offered by this server')}")


def _method_inputs(inputs: Sequence[MethodParam]) -> None:
    """The chosen method's parameters, as the API's OpenAPI document describes them (bounds, defaults, help)."""
    if not inputs:
        return
    st.markdown(f"**{inputs[0].method} parameters**")
    for column, p in zip(st.columns(4), inputs, strict=False):
        with column:
            if p.is_int:
                st.number_input(p.title, int(p.low), int(p.high), step=1, key=p.key, help=p.description or None)
            else:
                st.number_input(
                    p.title, p.low, p.high, step=FLOAT_STEP, key=p.key, format="%.3g", help=p.description or None
                )


def _form(objectives: Sequence[Objective], params: Params) -> tuple[bool, bool]:
    """The prompt and every knob in one form (one change, one request); returns (generate, save)."""
    with st.form("generate_form"):
        st.text_area("Prompt", key="prompt", height=80)
        if objectives:
            st.markdown("**Objective weights** (0 = ignore, negative = steer away)")
            columns = st.columns(4)  # fixed width: one slider looks like four
            for i, objective in enumerate(objectives):
                with columns[i % len(columns)]:
                    st.slider(
                        f"{objective.name} (v{objective.version})",
                        min_value=WEIGHT_RANGE[0],
                        max_value=WEIGHT_RANGE[1],
                        step=0.1,
                        key=weight_key(objective.name),
                        help=objective.description or None,
                    )
        else:
            st.info(
                "No objective is active, so there is nothing to steer with yet: an admin can register "
                "heads on the Admin page (`personalize demo` registers the shipped heads)."
            )
        left, middle, right = st.columns(3)
        with left:
            st.slider("beta (steering strength)", BETA_RANGE[0], BETA_RANGE[1], step=0.5, key="beta")
        with middle:
            st.slider("Max tokens", 16, 512, step=16, key="max_tokens")
            st.slider("Temperature (0 = greedy)", 0.0, 1.5, step=0.05, key="temperature")
        with right:
            st.number_input("Seed (same seed, same text)", min_value=0, max_value=2**31 - 1, step=1, key="seed")
        _method_inputs(params.get(str(st.session_state["method"]), ()))
        buttons = st.columns([1, 1, 4])
        with buttons[0]:
            generate = st.form_submit_button("Generate", type="primary", key="generate")
        with buttons[1]:
            save = st.form_submit_button("Save as my profile", key="save_profile")
    return generate, save


def _applied(answer: Answer) -> str:
    applied = answer.personalization or {}
    if not applied:
        return ""
    weights = applied.get("weights") or {}
    steering = ", ".join(f"{k}={v:+g}" for k, v in weights.items() if v) or "no weights"
    heads = ", ".join(f"{k} v{v}" for k, v in (applied.get("head_versions") or {}).items())
    return f"applied: {applied.get('method')} · beta {applied.get('beta')} · {steering}" + (
        f" · heads {heads}" if heads else ""
    )


def _show(label: str, answer: Answer, text_slot: Any, info_slot: Any) -> None:
    if answer.error:
        text_slot.error(answer.error)
    else:
        text_slot.markdown(answer.text + ("" if answer.done else " ▌"))
    if answer.done and not answer.error:
        finish = {"length": "cut at max tokens", "stop": "finished"}.get(answer.finish_reason or "", "")
        parts = [answer.length_label(), finish, f"{answer.seconds:.1f} s", answer.compute_label(), _applied(answer)]
        if label == "personalized" and answer.tokens:
            pushes = ", ".join(f"{k} {v:+.1f}" for k, v in sorted(total_push(answer.tokens).items()))
            parts.append(f"total push: {pushes}" if pushes else "")
        info_slot.caption(" · ".join(p for p in parts if p))


def _answers_area(settings: GenerationSettings | None, prompt: str, api: ApiClient) -> Mapping[str, Answer]:
    """Two columns; streams fresh answers (then scores them) when ``settings`` is given, else shows the last
    ones. Under each answer: its length and what was applied, then its rewards."""
    columns = dict(zip(LABELS, st.columns(2), strict=True))
    slots: dict[str, tuple[Any, Any]] = {}
    reward_slots: dict[str, Any] = {}
    for label, column in columns.items():
        with column:
            st.subheader(LABELS[label])
            slots[label] = (st.empty(), st.empty())
            reward_slots[label] = st.empty()
    notice = st.empty()
    if settings is None:
        answers: Mapping[str, Answer] = st.session_state.get(ANSWERS, {})
        for label, answer in answers.items():
            _show(label, answer, *slots[label])
        if not answers:
            for text_slot, _ in slots.values():
                text_slot.caption("Press Generate: the answer streams here.")
    else:
        requests = {
            "base": replace(settings, method="base", weights={}, explain=False),
            "personalized": replace(settings, explain=True),
        }
        answers = stream_side_by_side(
            {label: partial(api.stream_chat, prompt, s) for label, s in requests.items()},
            lambda label, answer: _show(label, answer, *slots[label]),
        )
        st.session_state[ANSWERS] = answers
        with st.spinner("Scoring the answers with each objective's reward..."):
            st.session_state[REWARDS] = score_answers(api, prompt, answers)
    rewards: AnswerRewards = st.session_state.get(REWARDS, AnswerRewards())
    if rewards.error:
        notice.warning(f"Could not score the answers: {rewards.error}")
    for label, slot in reward_slots.items():
        show_rewards(slot, rewards, label, baseline="base" if label != "base" else None)
    return answers


def _token_view(answer: Answer | None, objectives: Sequence[Objective]) -> None:
    if answer is None or answer.error or not answer.tokens:
        return
    st.subheader("Token view")
    names = {o.name for o in objectives} | {k for t in answer.tokens for k in t.contributions}
    colours = objective_colours(names)
    st.caption("Each token of the personalized answer, coloured by the objective that raised its score most.")
    st.html(legend_html(colours))
    st.html(tokens_html(answer.tokens, colours))
    if not any(t.contributions for t in answer.tokens):
        st.caption("Nothing steered this answer (method base or bon, or all weights 0): no colours.")


def main() -> None:
    api, user = session.require_user()
    st.title("Generate")
    st.caption("The same frozen model answers twice: plain, and steered by your weights at every token.")
    try:
        objectives = [o for o in api.objectives() if o.active]
        document = api.openapi()  # what the service accepts: its methods and their parameters
    except ApiError as exc:
        st.error(f"Cannot read the objectives from the service: {exc}")
        st.stop()
    methods, params = methods_from_openapi(document), method_params_from_openapi(document)
    _defaults(objectives, methods, params)
    profile_box = st.container()
    if PROFILE_VERSION not in st.session_state:  # first visit: start from the saved profile
        try:
            load_profile(api, user, objectives, methods)
        except ApiError as exc:
            profile_box.warning(f"Could not load your profile: {exc}")
    if st.button("Load my profile", key="load_profile"):
        try:
            note = load_profile(api, user, objectives, methods)
        except ApiError as exc:
            profile_box.error(f"Could not load your profile: {exc}")
        else:
            st.session_state["profile_message"] = (
                f"Loaded your profile (version {st.session_state[PROFILE_VERSION]})" + (f": {note}" if note else ".")
            )
            st.rerun()  # the widgets take the loaded values on the next run
    if message := st.session_state.pop("profile_message", None):
        profile_box.success(message)

    _method_picker(methods)
    generate, save = _form(objectives, params)
    settings = _settings(objectives, params)
    if save:
        try:
            saved = api.save_profile(user.id, settings, version=st.session_state.get(PROFILE_VERSION))
        except ConflictError as exc:
            profile_box.error(
                "Not saved: your profile was changed elsewhere (another tab or client) after you loaded it "
                f"({exc.message}). Press **Load my profile** to see the newer one, then save again."
            )
        except ApiError as exc:
            profile_box.error(f"Not saved: {exc}")
        else:
            st.session_state[PROFILE_VERSION] = saved.version
            profile_box.success(f"Saved as your profile (version {saved.version}).")
    prompt = str(st.session_state["prompt"]).strip()
    if generate and not prompt:
        st.error("Write a prompt first.")
        generate = False
    answers = _answers_area(settings if generate else None, prompt, api)
    _token_view(answers.get("personalized"), objectives)


main()
