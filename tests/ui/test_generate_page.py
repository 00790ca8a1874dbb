"""The Generate page against the live API: sign-in, a slider per objective, method parameters, requests,
answers and their rewards, profile."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from personalize.rewards import register_reward
from tests.integration.conftest import brevity
from tests.ui.conftest import LiveApi, letters_shared, new_app, sign_in, texts

pytestmark = pytest.mark.integration


def test_signed_out_page_asks_to_sign_in(ui_env: LiveApi) -> None:
    at = new_app().run()
    assert not at.exception
    assert "Sign in with your API key" in texts(at)
    assert not at.slider


def test_a_wrong_key_is_refused_with_the_services_message(ui_env: LiveApi) -> None:
    at = sign_in(new_app(), "pz-not-a-key")
    assert "Sign-in failed: invalid API key" in texts(at)


def test_prefilled_key_signs_in(ui_env: LiveApi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSONALIZE_UI_API_KEY", ui_env.user_key)
    at = new_app().run()
    assert at.sidebar.text_input(key="api_key_input").value == ui_env.user_key
    at.sidebar.button(key="sign_in").click()
    at.run()
    assert "Signed in as" in texts(at)


def test_one_slider_per_active_objective(ui_env: LiveApi) -> None:
    at = sign_in(new_app(), ui_env.user_key)
    assert not at.exception
    keys = {s.key for s in at.slider}
    assert {"w_concise", "w_helpful", "beta", "max_tokens", "temperature"} <= keys
    schema = ui_env.client.get("/openapi.json").json()["components"]["schemas"]["PersonalizationIn"]
    accepted = next(o["enum"] for o in schema["properties"]["method"]["anyOf"] if "enum" in o)
    assert at.selectbox(key="method").options == accepted  # whatever the API accepts, nothing more
    assert {"base", "vas", "bon"} <= set(accepted)
    # a deactivated head's slider goes away without any code change
    patch = ui_env.client.patch("/v1/objectives/helpful", json={"active": False}, headers=ui_env.auth())
    assert patch.status_code == 200, patch.text
    at.run()
    assert "w_helpful" not in {s.key for s in at.slider} and "w_concise" in {s.key for s in at.slider}


def test_generate_sends_the_chosen_weights_and_shows_both_answers(ui_env: LiveApi) -> None:
    at = sign_in(new_app(), ui_env.user_key)
    at.slider(key="w_concise").set_value(1.0)
    at.slider(key="w_helpful").set_value(-0.5)
    at.slider(key="beta").set_value(3.0)
    at.slider(key="max_tokens").set_value(32)
    at.number_input(key="seed").set_value(7)
    at.button(key="generate").click()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    sent = ui_env.recorder.posted("/v1/chat/completions")
    assert len(sent) == 2
    steered = next(b for b in sent if b["personalization"]["method"] == "vas")
    plain = next(b for b in sent if b["personalization"]["method"] == "base")
    assert steered["personalization"] == {
        "weights": {"concise": 1.0, "helpful": -0.5},
        "beta": 3.0,
        "method": "vas",
        "explain": True,
    }
    assert steered["seed"] == plain["seed"] == 7 and steered["max_tokens"] == plain["max_tokens"] == 32
    assert steered["stream"] is True and steered["messages"][0]["content"] == "How do I clean my keyboard?"
    page = texts(at)
    assert "Base model" in page and "Personalized" in page
    for body in (plain, steered):  # each column shows exactly what the service answers to that request
        again = ui_env.client.post(
            "/v1/chat/completions", json={**body, "stream": False}, headers=ui_env.auth(ui_env.user_key)
        )
        answer = again.json()["choices"][0]["message"]["content"]
        assert answer.strip() and any(m.value == answer for m in at.markdown), answer
        cost = again.json()["compute"]  # and what it cost, as the API reports it
        assert any(f"{cost['forwards']} forwards · {cost['flops'] / 1e9:.1f} GFLOPs" in c.value for c in at.caption), (
            cost
        )
    captions = [c.value for c in at.caption if "words" in c.value]
    assert len(captions) == 2  # each answer's length
    assert any("applied: vas · beta 3.0 · concise=+1, helpful=-0.5" in c for c in captions)
    assert any("total push: concise" in c for c in captions)
    token_view = "".join(h.proto.body for h in at.get("html"))
    assert 'class="pz-token"' in token_view and "concise" in token_view


def test_bon_without_weights_shows_the_api_error(ui_env: LiveApi) -> None:
    at = sign_in(new_app(), ui_env.user_key)
    at.selectbox(key="method").set_value("bon")
    at.button(key="generate").click()
    at.run()
    errors = [e.value for e in at.error]
    assert any("method 'bon' ranks samples" in e for e in errors), errors


def test_save_load_and_a_conflicting_save(ui_env: LiveApi) -> None:
    at = sign_in(new_app(), ui_env.user_key)
    at.slider(key="w_concise").set_value(1.5)
    at.slider(key="beta").set_value(4.0)
    at.button(key="save_profile").click()
    at.run()
    assert "Saved as your profile (version 2)" in texts(at)
    profile = ui_env.client.get(f"/v1/users/{ui_env.user_id}/profile", headers=ui_env.auth()).json()
    assert profile["weights"] == {"concise": 1.5, "helpful": 0.0} and profile["beta"] == 4.0

    # another client saves meanwhile: this page's next save is refused, clearly
    put = ui_env.client.put(
        f"/v1/users/{ui_env.user_id}/profile",
        json={"weights": {"helpful": 0.7}, "beta": 1.0, "version": 2},
        headers=ui_env.auth(ui_env.user_key),
    )
    assert put.status_code == 200, put.text
    at.slider(key="w_concise").set_value(0.3)
    at.button(key="save_profile").click()
    at.run()
    message = " ".join(e.value for e in at.error)
    assert "changed elsewhere" in message and "Load my profile" in message

    at.button(key="load_profile").click()
    at.run()
    assert at.slider(key="w_helpful").value == pytest.approx(0.7)
    assert at.slider(key="w_concise").value == 0.0 and at.slider(key="beta").value == 1.0
    assert "Loaded your profile (version 3)" in texts(at)
    at.button(key="save_profile").click()
    at.run()
    assert "Saved as your profile (version 4)" in texts(at)


IVG_KEYS = {"ivg_candidates", "ivg_chunk_tokens", "ivg_beams", "ivg_implicit_weight"}
AISP_KEYS = {"aisp_sigma", "aisp_lam", "aisp_samples", "aisp_iterations"}


def _number_keys(at: AppTest) -> set[str]:
    return {str(n.key) for n in at.number_input}


def _steered_request(api: LiveApi, method: str) -> dict[str, Any]:
    sent = api.recorder.posted("/v1/chat/completions")
    assert len(sent) == 2 and {b["personalization"]["method"] for b in sent} == {"base", method}, sent
    plain = next(b for b in sent if b["personalization"]["method"] == "base")
    assert set(plain["personalization"]) == {"weights", "beta", "method"}  # no method parameters for base
    steered: dict[str, Any] = next(b for b in sent if b["personalization"]["method"] == method)
    return steered


def test_each_method_shows_its_own_parameters(ui_env: LiveApi) -> None:
    at = sign_in(new_app(), ui_env.user_key)
    assert at.selectbox(key="method").value == "vas"
    assert not (IVG_KEYS | AISP_KEYS | {"best_of"}) & _number_keys(at)
    for method, keys in (("ivg", IVG_KEYS), ("aisp", AISP_KEYS), ("bon", {"best_of"})):
        at.selectbox(key="method").set_value(method)
        at.run()
        assert not at.exception
        shown = _number_keys(at) - {"seed"}
        assert shown == keys, (method, shown)
    at.selectbox(key="method").set_value("vas")
    at.run()
    assert _number_keys(at) == {"seed"}


def test_ivg_parameters_go_into_the_request(ui_env: LiveApi) -> None:
    at = sign_in(new_app(), ui_env.user_key)
    at.selectbox(key="method").set_value("ivg")
    at.run()
    at.slider(key="w_concise").set_value(1.0)
    at.slider(key="max_tokens").set_value(16)
    at.number_input(key="ivg_candidates").set_value(3)
    at.number_input(key="ivg_chunk_tokens").set_value(4)
    at.number_input(key="ivg_beams").set_value(1)
    at.number_input(key="ivg_implicit_weight").set_value(0.5)
    at.button(key="generate").click()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    steered = _steered_request(ui_env, "ivg")
    assert steered["personalization"]["ivg"] == {"candidates": 3, "chunk_tokens": 4, "beams": 1, "implicit_weight": 0.5}
    assert "aisp" not in steered["personalization"] and "best_of" not in steered["personalization"]
    assert any("applied: ivg" in c.value for c in at.caption)


def test_aisp_parameters_go_into_the_request(ui_env: LiveApi) -> None:
    at = sign_in(new_app(), ui_env.user_key)
    at.selectbox(key="method").set_value("aisp")
    at.run()
    at.slider(key="w_concise").set_value(1.0)
    at.slider(key="max_tokens").set_value(16)
    at.number_input(key="aisp_sigma").set_value(1.5)
    at.number_input(key="aisp_lam").set_value(0.25)
    at.number_input(key="aisp_samples").set_value(2)
    at.number_input(key="aisp_iterations").set_value(1)
    at.button(key="generate").click()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    steered = _steered_request(ui_env, "aisp")
    assert steered["personalization"]["aisp"] == {"sigma": 1.5, "lam": 0.25, "samples": 2, "iterations": 1}
    assert "ivg" not in steered["personalization"]
    assert any("applied: aisp" in c.value for c in at.caption)


def test_each_answer_shows_its_rewards(ui_env: LiveApi) -> None:
    at = sign_in(new_app(), ui_env.user_key)
    at.slider(key="w_concise").set_value(1.0)
    at.slider(key="max_tokens").set_value(32)
    at.number_input(key="seed").set_value(3)
    at.button(key="generate").click()
    at.run()
    assert not at.exception and not at.error and not at.warning, [w.value for w in at.warning]
    [scored] = ui_env.recorder.posted("/v1/rewards/score")  # one request for both answers
    base, personalized = scored["responses"]
    assert scored["prompt"] == "How do I clean my keyboard?" and "objectives" not in scored
    shown = {m.value for m in at.markdown}
    assert base in shown and personalized in shown  # the answers on the page, as they were scored
    metrics = [(m.proto.label, m.proto.body, m.proto.delta) for m in at.metric]
    expected: list[tuple[str, str, str]] = []
    prompts = [scored["prompt"]]
    values = {
        text: {"concise": brevity(prompts, [text])[0], "helpful": letters_shared(prompts, [text])[0]}
        for text in (base, personalized)
    }
    for text, reference in ((base, None), (personalized, base)):
        for name in ("concise", "helpful"):
            value = values[text][name]
            delta = "" if reference is None else f"{value - values[reference][name]:+.3f}"
            expected.append((name, f"{value:.3f}", delta))
    assert metrics == expected


def test_a_failing_reward_is_a_warning_and_the_answers_stay(ui_env: LiveApi) -> None:
    def broken(_prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        return [float("nan")] * len(responses)

    register_reward("helpful", broken, replace=True)  # the fixture puts the built-in one back
    at = sign_in(new_app(), ui_env.user_key)
    at.slider(key="max_tokens").set_value(16)
    at.button(key="generate").click()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    warnings = [w.value for w in at.warning]
    assert any("Could not score the answers" in w and "non-finite" in w for w in warnings), warnings
    assert not at.metric
    assert len([c.value for c in at.caption if "words" in c.value]) == 2  # both answers still shown
