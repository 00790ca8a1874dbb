"""POST /v1/rewards/score: each response scored by each active objective's reward function."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from personalize.rewards import register_reward
from tests.integration.conftest import Service, brevity, exclaims
from tests.integration.helpers import register_head

pytestmark = pytest.mark.integration

PROMPT = "How do I clean my keyboard?"
RESPONSES = ["Shake it!", "Unplug it, turn it over and blow the crumbs out with compressed air!!", ""]


def score(service: Service, key: str | None = None, **body: Any) -> Any:
    payload: dict[str, Any] = {"prompt": PROMPT, "responses": RESPONSES}
    payload.update(body)
    return service.client.post("/v1/rewards/score", json=payload, headers=service.auth(key))


def test_every_active_objective_scores_every_response(rewarded: Service) -> None:
    _, key = rewarded.create_user()  # any signed-in user may score
    response = score(rewarded, key)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "reward_scores"
    assert body["rewards"] == {"brevity": "brevity", "shouty": "exclaims"}  # head.json's reward, not the name
    assert body["head_versions"] == {"brevity": "1", "shouty": "1"}
    assert body["ranges"] == {"brevity": [0.0, 1.0], "shouty": [0.0, None]}  # unbounded above: null
    prompts = [PROMPT] * len(RESPONSES)
    assert body["objectives"]["brevity"] == pytest.approx(brevity(prompts, RESPONSES))
    assert body["objectives"]["shouty"] == [1.0, 2.0, 0.0] == exclaims(prompts, RESPONSES)
    for name, scores in body["objectives"].items():
        low, high = body["ranges"][name]
        assert all(low <= s and (high is None or s <= high) for s in scores), (name, scores)


def test_only_the_objectives_asked_for_in_that_order(rewarded: Service) -> None:
    body = score(rewarded, objectives=["shouty", "brevity", "shouty"]).json()
    assert list(body["objectives"]) == ["shouty", "brevity"]
    assert list(score(rewarded, objectives=["shouty"]).json()["objectives"]) == ["shouty"]


def test_scoring_runs_off_the_event_loop(rewarded: Service) -> None:
    on_loop: list[bool] = []

    def probe(_prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            on_loop.append(False)
        else:
            on_loop.append(True)
        return [0.0] * len(responses)

    register_reward("exclaims", probe, value_range=(0.0, 1.0), replace=True)  # the fixture unregisters it
    assert score(rewarded, objectives=["shouty"]).status_code == 200
    assert on_loop == [False]


def test_without_a_valid_key_is_401(rewarded: Service) -> None:
    missing = rewarded.client.post("/v1/rewards/score", json={"prompt": PROMPT, "responses": RESPONSES})
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "authentication_error"
    wrong = score(rewarded, "pz-not-a-key")
    assert wrong.status_code == 401


def test_unknown_or_inactive_objective_is_422_listing_the_active_ones(rewarded: Service) -> None:
    response = score(rewarded, objectives=["brevity", "nope"])
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "unknown_objective" and error["param"] == "objectives.1"
    assert "'nope'" in error["message"] and "brevity, shouty" in error["message"]
    patch = rewarded.client.patch("/v1/objectives/shouty", json={"active": False}, headers=rewarded.auth())
    assert patch.status_code == 200, patch.text
    inactive = score(rewarded, objectives=["shouty"])
    assert inactive.status_code == 422 and "active objectives: brevity" in inactive.json()["error"]["message"]
    assert list(score(rewarded).json()["objectives"]) == ["brevity"]


def test_a_head_naming_an_unknown_reward_is_422_naming_it(
    rewarded: Service, tiny_head_dir: Callable[..., Path]
) -> None:
    register_head(rewarded, tiny_head_dir("mystery", kind="linear", seed=3, reward="no-such-reward"))
    response = score(rewarded, objectives=["mystery"])
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "reward_error" and error["param"] == "objectives.mystery"
    assert "no-such-reward" in error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"responses": []}, "responses"),
        ({"responses": ["ok"] * 17}, "responses"),
        ({"responses": ["x" * 16_001]}, "responses.0"),
        ({"prompt": "x" * 16_001}, "prompt"),
        ({"objectives": []}, "objectives"),
        ({"objectives": ["Not A Name"]}, "objectives.0"),
        ({"weights": {"brevity": 1.0}}, "weights"),
    ],
)
def test_bad_bodies_are_422_naming_the_field(rewarded: Service, body: dict[str, Any], param: str) -> None:
    response = score(rewarded, **body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == param


def test_without_a_prompt_is_422(rewarded: Service) -> None:
    response = rewarded.client.post("/v1/rewards/score", json={"responses": ["hi"]}, headers=rewarded.auth())
    assert response.status_code == 422 and response.json()["error"]["param"] == "prompt"


def test_a_head_naming_a_python_function_registers_but_the_service_never_imports_it(
    rewarded: Service, tiny_head_dir: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys
    import uuid

    module = f"reward_probe_{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "imported"
    (tmp_path / f"{module}.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('yes')\n"
        "def score(prompts, responses):\n    return [1.0] * len(responses)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))  # importable, were the service ever to import it
    register_head(rewarded, tiny_head_dir("formal", kind="linear", seed=4, reward=f"{module}:score"))
    response = score(rewarded, objectives=["formal"])
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "reward_error" and error["param"] == "objectives.formal"
    assert f"{module}:score" in error["message"] and "imports no module" in error["message"]
    ranked = rewarded.client.post(
        "/v1/chat/completions",
        json={
            "model": "default",
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": 4,
            "personalization": {"method": "bon", "best_of": 2, "weights": {"formal": 1.0}},
        },
        headers=rewarded.auth(),
    )
    assert ranked.status_code == 422, ranked.text  # Best-of-N would rank with it: refused the same way
    assert f"{module}:score" in ranked.json()["error"]["message"]
    assert module not in sys.modules and not marker.exists()


@pytest.mark.parametrize(
    ("reward", "says"),
    [("hf:/somewhere/else/model", "outside this service's reward root"), ("hf:model", "absolute paths")],
)
def test_an_hf_reward_outside_the_reward_root_is_refused_at_upload(
    rewarded: Service, tiny_head_dir: Callable[..., Path], reward: str, says: str
) -> None:
    from tests.integration.helpers import head_files

    folder = tiny_head_dir("judged", kind="linear", seed=5, reward=reward)
    response = rewarded.client.post("/v1/objectives", files=head_files(folder), headers=rewarded.auth())
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == "files" and says in error["message"] and reward in error["message"]
    assert rewarded.client.get("/v1/objectives/judged", headers=rewarded.auth()).status_code == 404


def test_an_hf_reward_inside_the_reward_root_registers(rewarded: Service, tiny_head_dir: Callable[..., Path]) -> None:
    inside = rewarded.settings.reward_dir / "judge"
    register_head(rewarded, tiny_head_dir("judged", kind="linear", seed=5, reward=f"hf:{inside}"))
    response = score(rewarded, objectives=["judged"])
    assert response.status_code == 422 and "not a directory" in response.json()["error"]["message"]  # no model yet
