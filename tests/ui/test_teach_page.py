"""The Teach me page: a pair of answers, a choice, the weights refitted and plotted, all through the API."""

from __future__ import annotations

import pytest

from tests.ui.conftest import LiveApi, new_app, sign_in, texts

pytestmark = pytest.mark.integration
PAGE = "views/teach.py"


def test_choices_move_the_weights_and_are_stored(ui_env: LiveApi) -> None:
    at = sign_in(new_app(), ui_env.user_key)
    at.switch_page(PAGE).run()
    assert not at.exception
    at.text_input(key="teach_prompt").input("How do I water a cactus?")
    at.button(key="teach_new").click().run()
    assert not at.exception and not at.error, texts(at)
    duels = ui_env.recorder.posted(f"/v1/users/{ui_env.user_id}/duel")
    assert len(duels) == 1 and duels[0]["prompt"] == "How do I water a cactus?"
    assert [s.value for s in at.subheader][:2] == ["Left", "Right"]
    assert "new answers." in texts(at) and "earlier pairs" not in texts(at)

    at.button(key="teach_left").click().run()
    assert not at.exception, texts(at)
    sent = ui_env.recorder.posted(f"/v1/users/{ui_env.user_id}/feedback")
    if at.error:  # two identical samples from the tiny model: refused with 422, nothing stored
        assert "same answer" in texts(at) and not sent
        pytest.skip("the tiny model answered the same twice")
    assert len(sent) == 1 and sent[0]["prompt"] == "How do I water a cactus?"
    assert sent[0]["chosen_personalization"]["weights"]  # what each answer was generated with goes along
    assert len(ui_env.recorder.posted(f"/v1/users/{ui_env.user_id}/duel")) == 2  # the next pair came at once
    assert "from your earlier pairs on this prompt" in texts(at)  # chosen among the first duel's answers too
    assert "Fitted from 1 choice(s)" in texts(at)
    assert {m.label for m in at.metric} == {"concise", "helpful"}

    at.button(key="teach_right").click().run()
    assert not at.exception
    assert "Fitted from 2 choice(s)" in texts(at)
    assert len(at.get("vega_lite_chart")) == 1, "no plot of the weights over comparisons"
    profile = ui_env.client.get(f"/v1/users/{ui_env.user_id}/profile", headers=ui_env.auth()).json()
    assert profile["source"] == "feedback"


def test_neither_asks_for_another_pair_without_teaching_and_forget_resets(ui_env: LiveApi) -> None:
    at = sign_in(new_app(), ui_env.user_key)
    at.switch_page(PAGE).run()
    at.button(key="teach_new").click().run()
    at.button(key="teach_neither").click().run()
    assert not at.exception
    assert len(ui_env.recorder.posted(f"/v1/users/{ui_env.user_id}/duel")) == 2
    assert not ui_env.recorder.posted(f"/v1/users/{ui_env.user_id}/feedback")
    at.button(key="teach_reset").click().run()
    assert not at.exception and "choices were deleted" in texts(at)


def test_signed_out_it_asks_to_sign_in(ui_env: LiveApi) -> None:
    at = new_app()
    at.run()
    at.switch_page(PAGE).run()
    assert not at.exception and "Sign in" in texts(at)
