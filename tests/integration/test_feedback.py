"""Pairwise feedback over HTTP: who may post, what is stored, the refit profile, deletion, 422s, races, duels."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest

from personalize.db import Database, FeedbackStore
from personalize.db.models import utcnow
from tests.integration.conftest import Service

pytestmark = pytest.mark.integration

PROMPT = "How do I clean my keyboard?"
SHORT = "Shake it out."
LONG = "Unplug it, turn it over, shake it, and then blow the crumbs out with a can of compressed air, gently."


def post(service: Service, user_id: str, key: str | None = None, **body: Any) -> Any:
    payload: dict[str, Any] = {"prompt": PROMPT, "chosen": SHORT, "rejected": LONG}
    payload.update(body)
    return service.client.post(f"/v1/users/{user_id}/feedback", json=payload, headers=service.auth(key))


def test_own_feedback_is_scored_stored_and_fitted(rewarded: Service) -> None:
    user_id, key = rewarded.create_user()
    before = rewarded.client.get(f"/v1/users/{user_id}/profile", headers=rewarded.auth(key)).json()
    response = post(rewarded, user_id, key, chosen_personalization={"weights": {"brevity": 1.0}})
    assert response.status_code == 200, response.text
    body = response.json()
    stored = body["feedback"]
    assert stored["prompt"] == PROMPT and stored["chosen"] == SHORT and not stored["texts_removed"]
    assert set(stored["scores"]) == {"brevity", "shouty"}  # every active objective, as /v1/rewards/score does
    assert stored["scores"]["brevity"][0] > stored["scores"]["brevity"][1]
    assert stored["chosen_personalization"] == {"weights": {"brevity": 1.0}, "explain": False, "within_top_k": False}
    fit = body["fit"]
    assert fit["comparisons"] == 1 and fit["objectives"] == ["brevity", "shouty"] and fit["ignored"] == []
    assert fit["utility"]["brevity"] > 0 and set(fit["stderr"]) == {"brevity", "shouty"}
    assert sum(u * u for u in fit["utility"].values()) == pytest.approx(1.0, abs=1e-4)
    profile = body["profile"]
    assert profile["source"] == "feedback" and profile["version"] == before["version"] + 1
    assert profile["weights"] == fit["weights"] and profile["beta"] == before["beta"]
    again = rewarded.client.get(f"/v1/users/{user_id}/profile", headers=rewarded.auth(key)).json()
    assert again["weights"] == fit["weights"] and again["source"] == "feedback"


def test_more_choices_for_the_short_answer_push_its_weight_up(rewarded: Service) -> None:
    user_id, key = rewarded.create_user()
    stderrs = []
    for i in range(4):
        body = post(rewarded, user_id, key, chosen=f"Shake it {i}.", rejected=f"{LONG} ({i})").json()
        stderrs.append(body["fit"]["stderr"]["brevity"])
    assert body["fit"]["comparisons"] == 4
    assert body["fit"]["weights"]["brevity"] > 0
    assert stderrs[-1] < stderrs[0]


def test_another_users_key_is_403_and_an_admin_may_post_for_anyone(rewarded: Service) -> None:
    user_id, _ = rewarded.create_user()
    _, other_key = rewarded.create_user()
    for response in (
        post(rewarded, user_id, other_key),
        rewarded.client.get(f"/v1/users/{user_id}/feedback", headers=rewarded.auth(other_key)),
        rewarded.client.delete(f"/v1/users/{user_id}/feedback", headers=rewarded.auth(other_key)),
        rewarded.client.post(f"/v1/users/{user_id}/duel", json={"prompt": "hi"}, headers=rewarded.auth(other_key)),
    ):
        assert response.status_code == 403, response.text
        assert response.json()["error"]["type"] == "permission_error"
    assert post(rewarded, user_id).status_code == 200  # the admin key
    assert post(rewarded, "no-such-user").status_code == 404
    assert rewarded.client.post(f"/v1/users/{user_id}/feedback", json={}).status_code == 401


def test_list_and_delete_refit_and_reset_the_profile(rewarded: Service) -> None:
    user_id, key = rewarded.create_user()
    manual = {"weights": {"shouty": 0.5}, "beta": 2.0}
    put = rewarded.client.put(f"/v1/users/{user_id}/profile", json=manual, headers=rewarded.auth(key))
    assert put.status_code == 200
    ids = [post(rewarded, user_id, key, chosen=f"Short {i}.").json()["feedback"]["id"] for i in range(3)]
    listed = rewarded.client.get(f"/v1/users/{user_id}/feedback?limit=2", headers=rewarded.auth(key)).json()
    assert [f["id"] for f in listed["data"]] == ids[::-1][:2] and listed["total"] == 3 and listed["has_more"]
    one = rewarded.client.delete(f"/v1/users/{user_id}/feedback/{ids[0]}", headers=rewarded.auth(key))
    assert one.status_code == 200, one.text
    assert one.json()["deleted"] == 1 and one.json()["fit"]["comparisons"] == 2
    assert one.json()["profile"]["source"] == "feedback" and one.json()["profile"]["beta"] == 2.0
    missing = rewarded.client.delete(f"/v1/users/{user_id}/feedback/{ids[0]}", headers=rewarded.auth(key))
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "feedback_not_found"
    everything = rewarded.client.delete(f"/v1/users/{user_id}/feedback", headers=rewarded.auth(key)).json()
    assert everything["deleted"] == 2 and everything["fit"] is None
    profile = everything["profile"]
    assert profile["source"] == "manual" and profile["weights"] == {"shouty": 0.5}  # back to the manual weights
    assert rewarded.client.get(f"/v1/users/{user_id}/feedback", headers=rewarded.auth(key)).json()["total"] == 0


def test_a_slider_move_overrides_and_later_feedback_starts_from_it(rewarded: Service) -> None:
    user_id, key = rewarded.create_user()
    post(rewarded, user_id, key)
    current = rewarded.client.get(f"/v1/users/{user_id}/profile", headers=rewarded.auth(key)).json()
    moved = {"weights": {"shouty": 1.0}, "version": current["version"]}
    put = rewarded.client.put(f"/v1/users/{user_id}/profile", json=moved, headers=rewarded.auth(key)).json()
    assert put["source"] == "manual" and put["weights"] == {"shouty": 1.0}
    body = post(rewarded, user_id, key, chosen="Shake it!", rejected=LONG).json()
    assert body["profile"]["version"] == put["version"] + 1 and body["profile"]["source"] == "feedback"
    assert body["fit"]["utility"]["shouty"] > 0  # pulled toward the manual profile as well as by the choice


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"prompt": ""}, "prompt"),
        ({"chosen": "   "}, "chosen"),
        ({"rejected": SHORT}, "rejected"),
        ({"chosen_personalization": {"weights": {"nope": 1.0}}}, "chosen_personalization.weights.nope"),
        ({"rejected_personalization": {"weights": {"brevity": 99}}}, "rejected_personalization.weights.brevity"),
        ({"extra": 1}, "extra"),
    ],
)
def test_bad_input_is_422_naming_the_field(rewarded: Service, change: dict[str, Any], param: str) -> None:
    user_id, key = rewarded.create_user()
    response = post(rewarded, user_id, key, **change)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == param
    listed = rewarded.client.get(f"/v1/users/{user_id}/feedback", headers=rewarded.auth(key)).json()
    assert listed["total"] == 0  # nothing stored


def test_missing_fields_are_422(rewarded: Service) -> None:
    user_id, key = rewarded.create_user()
    url = f"/v1/users/{user_id}/feedback"
    response = rewarded.client.post(url, json={"prompt": PROMPT}, headers=rewarded.auth(key))
    assert response.status_code == 422 and response.json()["error"]["param"] in ("chosen", "rejected")


def test_a_deactivated_objective_is_left_out_of_the_fit(rewarded: Service) -> None:
    user_id, key = rewarded.create_user()
    post(rewarded, user_id, key, chosen="Shake it!", rejected=LONG)
    off = rewarded.client.patch("/v1/objectives/shouty", json={"active": False}, headers=rewarded.auth())
    assert off.status_code == 200, off.text
    body = post(rewarded, user_id, key, chosen="Shake.", rejected=LONG).json()
    assert body["fit"]["objectives"] == ["brevity"] and body["fit"]["ignored"] == ["shouty"]
    assert set(body["fit"]["weights"]) == {"brevity"}
    assert body["fit"]["comparisons"] == 2


def test_texts_are_blanked_after_the_retention_period_and_the_scores_stay(rewarded: Service) -> None:
    user_id, key = rewarded.create_user()
    first = post(rewarded, user_id, key).json()["feedback"]
    db = Database(rewarded.settings.database_url)
    try:
        removed = FeedbackStore(db).remove_texts(utcnow() + timedelta(seconds=1))
    finally:
        db.dispose()
    assert removed == 1
    listed = rewarded.client.get(f"/v1/users/{user_id}/feedback", headers=rewarded.auth(key)).json()["data"]
    assert listed[0]["texts_removed"] and listed[0]["prompt"] == listed[0]["chosen"] == ""
    assert listed[0]["scores"] == first["scores"]


def test_with_no_retention_the_texts_are_never_stored(start_service: Any, rewarded: Service) -> None:
    del rewarded  # registers the heads and rewards in the shared database
    service = start_service(feedback_retention_days=0)
    user_id, key = service.create_user()
    stored = post(service, user_id, key).json()["feedback"]
    assert stored["texts_removed"] and stored["prompt"] == "" and stored["scores"]


def test_concurrent_posts_lose_no_comparison_and_no_update(rewarded: Service) -> None:
    user_id, key = rewarded.create_user()
    start = rewarded.client.get(f"/v1/users/{user_id}/profile", headers=rewarded.auth(key)).json()["version"]
    statuses: list[int] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        for j in range(2):
            response = post(rewarded, user_id, key, chosen=f"Short {i}-{j}.")
            with lock:
                statuses.append(response.status_code)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert statuses == [200] * 12
    listed = rewarded.client.get(f"/v1/users/{user_id}/feedback", headers=rewarded.auth(key)).json()
    assert listed["total"] == 12
    profile = rewarded.client.get(f"/v1/users/{user_id}/profile", headers=rewarded.auth(key)).json()
    assert profile["version"] >= start + 12  # every post wrote its own version
    final = post(rewarded, user_id, key, chosen="Last.").json()
    assert final["fit"]["comparisons"] == 13  # the last fit saw every comparison


def test_feedback_posts_have_their_own_rate_limit(start_service: Any, rewarded: Service) -> None:
    del rewarded
    service = start_service(feedback_rate_limit_per_minute=2)
    user_id, key = service.create_user()
    codes = [post(service, user_id, key, chosen=f"S{i}.").status_code for i in range(3)]
    assert codes[:2] == [200, 200] and codes[2] == 429


def test_a_duel_returns_the_most_informative_pair_and_counts_each_candidate(
    start_service: Any, rewarded: Service
) -> None:
    del rewarded
    service = start_service(rate_limit_per_minute=5, duel_candidates=3, duel_samples=1)
    user_id, key = service.create_user()
    response = service.client.post(
        f"/v1/users/{user_id}/duel", json={"prompt": PROMPT, "max_tokens": 4, "seed": 3}, headers=service.auth(key)
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["candidates"] == 3 and len(body["answers"]) == 2
    left, right = (a["personalization"]["weights"] for a in body["answers"])
    assert set(left) == set(right) == {"brevity", "shouty"} and left != right
    assert sum(d * d for d in body["direction"].values()) == pytest.approx(1.0, abs=1e-3)
    assert body["variance"] >= 0 and body["gain"] >= 0
    assert body["comparisons"] == 0
    for answer in body["answers"]:  # the profile's own (zero) weights, the odd candidate, steer with no head
        assert bool(answer["head_versions"]) == any(answer["personalization"]["weights"].values())
    back = post(
        service,
        user_id,
        key,
        chosen=body["answers"][0]["text"] + " a",
        rejected=body["answers"][1]["text"] + " b",
        chosen_personalization=body["answers"][0]["personalization"],
    )
    assert back.status_code == 200, back.text  # the personalization is accepted back as it came
    third = service.client.post(f"/v1/users/{user_id}/duel", json={"prompt": PROMPT}, headers=service.auth(key))
    assert third.status_code == 429  # 1 duel (3) + 1 feedback (1) + this duel's second generation > 5
    assert "3 requests" in third.json()["error"]["message"]


def test_a_duel_draws_sixteen_answers_by_default_and_fewer_under_a_lower_in_flight_limit(
    start_service: Any, rewarded: Service
) -> None:
    del rewarded
    service = start_service()  # the defaults: 4 candidates x 4 answers, 16 in flight per key
    user_id, key = service.create_user()
    body, _ = duel_texts(service, user_id, key, PROMPT, 5)
    assert body["candidates"] == 16 and len(body["answers"]) == 2
    narrow = start_service(max_in_flight_per_key=8)  # samples give way: 4 x 2
    assert duel_texts(narrow, user_id, key, PROMPT, 6)[0]["candidates"] == 8


def test_a_duel_is_the_same_for_the_same_seed(start_service: Any, rewarded: Service) -> None:
    del rewarded
    # two answers of each of two weight vectors; nothing kept, so the second duel sees what the first did
    service = start_service(duel_candidates=2, duel_samples=2, duel_keep=0)
    user_id, key = service.create_user()
    post(service, user_id, key)
    url, body = f"/v1/users/{user_id}/duel", {"prompt": PROMPT, "max_tokens": 6, "seed": 11}
    first, again = (service.client.post(url, json=body, headers=service.auth(key)).json() for _ in range(2))
    assert first["candidates"] == 4 and first["comparisons"] == 1 and first["kept"] == again["kept"] == 0
    assert [a["text"] for a in first["answers"]] == [a["text"] for a in again["answers"]]
    assert first["gain"] == pytest.approx(again["gain"])


def test_a_duel_over_the_work_cap_is_422(start_service: Any, rewarded: Service) -> None:
    del rewarded
    service = start_service(max_request_work=50)
    user_id, key = service.create_user()
    response = service.client.post(
        f"/v1/users/{user_id}/duel", json={"prompt": PROMPT, "max_tokens": 16}, headers=service.auth(key)
    )
    assert response.status_code == 422 and response.json()["error"]["code"] == "work_limit_exceeded"


def duel_texts(service: Service, user_id: str, key: str, prompt: str, seed: int) -> tuple[Any, frozenset[str]]:
    body = {"prompt": prompt, "max_tokens": 8, "seed": seed}
    response = service.client.post(f"/v1/users/{user_id}/duel", json=body, headers=service.auth(key))
    assert response.status_code == 200, response.text
    out = response.json()
    return out, frozenset(a["text"] for a in out["answers"])


def test_later_duels_on_a_prompt_choose_among_the_kept_answers_and_never_repeat_a_pair(
    start_service: Any, rewarded: Service
) -> None:
    del rewarded
    service = start_service(duel_candidates=2, duel_samples=1, duel_keep=5)
    user_id, key = service.create_user()
    shown: list[frozenset[str]] = []
    generated = 0
    for seed in range(4):
        body, pair = duel_texts(service, user_id, key, PROMPT, seed)
        assert body["candidates"] == 2 and body["kept"] == min(generated, 5)
        generated += 2
        shown.append(pair)
    assert len(set(shown)) == len(shown)  # no pair shown twice
    other, _ = duel_texts(service, user_id, key, "Name a colour.", 0)
    assert other["kept"] == 0  # kept per prompt
    someone, their_key = service.create_user()
    assert duel_texts(service, someone, their_key, PROMPT, 0)[0]["kept"] == 0  # kept per user
    assert service.client.delete(f"/v1/users/{user_id}/feedback", headers=service.auth(key)).status_code == 200
    again, _ = duel_texts(service, user_id, key, PROMPT, 9)
    assert again["kept"] == 0  # deleting the comparisons forgets the kept answers


@pytest.mark.parametrize("setting", [{"duel_keep": 0}, {"feedback_retention_days": 0}])
def test_nothing_is_kept_when_keeping_or_retention_is_off(
    start_service: Any, rewarded: Service, setting: dict[str, float]
) -> None:
    del rewarded
    service = start_service(duel_candidates=2, duel_samples=1, **setting)
    user_id, key = service.create_user()
    kept = [duel_texts(service, user_id, key, PROMPT, seed)[0]["kept"] for seed in range(2)]
    assert kept == [0, 0]
