"""OpenAI-format completions over HTTP: shapes, streaming, profiles, validation, batching, back-pressure."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.scheduler import Scheduler
from tests.integration.conftest import LiveServer, Service, wait_until
from tests.integration.helpers import chat, register_head, sse_events

pytestmark = pytest.mark.integration


@pytest.fixture
def steered(service: Service, tiny_head_dir: Callable[..., Path]) -> Service:
    register_head(service, tiny_head_dir("concise", seed=1))
    register_head(service, tiny_head_dir("helpful", kind="linear", seed=2))
    return service


def test_chat_completion_shape_and_profile_applied(steered: Service) -> None:
    user_id, key = steered.create_user()
    put = steered.client.put(
        f"/v1/users/{user_id}/profile",
        json={"weights": {"concise": 1.5, "helpful": -0.5}, "beta": 3.0, "version": 1},
        headers=steered.auth(key),
    )
    assert put.status_code == 200, put.text
    response = chat(steered, key, max_tokens=6, seed=1)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert 1 <= usage["completion_tokens"] <= 6
    applied = body["personalization"]
    assert applied["weights"] == {"concise": 1.5, "helpful": -0.5} and applied["beta"] == 3.0
    assert applied["head_versions"] == {"concise": "1", "helpful": "1"} and applied["user"] == user_id


def test_request_override_replaces_profile_fields(steered: Service) -> None:
    user_id, key = steered.create_user()
    steered.client.put(
        f"/v1/users/{user_id}/profile", json={"weights": {"concise": 1.0}, "beta": 3.0}, headers=steered.auth(key)
    )
    response = chat(steered, key, max_tokens=3, personalization={"weights": {"helpful": 2.0}, "method": "base"})
    applied = response.json()["personalization"]
    assert applied["weights"] == {"helpful": 2.0} and applied["beta"] == 3.0 and applied["method"] == "base"
    assert applied["head_versions"] == {}  # method "base" steers with nothing


def test_same_seed_same_text(steered: Service) -> None:
    texts = {
        chat(steered, max_tokens=8, seed=11, personalization={"weights": {"concise": 1.0}}).json()["choices"][0][
            "message"
        ]["content"]
        for _ in range(2)
    }
    assert len(texts) == 1


def test_user_field_selects_profile_only_for_admins(steered: Service) -> None:
    alice_id, alice_key = steered.create_user()
    bob_id, _ = steered.create_user()
    steered.client.put(f"/v1/users/{bob_id}/profile", json={"beta": 4.0}, headers=steered.auth())
    denied = chat(steered, alice_key, user=bob_id, max_tokens=2)
    assert denied.status_code == 403 and denied.json()["error"]["param"] == "user"
    own = chat(steered, alice_key, user=alice_id, max_tokens=2)
    assert own.status_code == 200 and own.json()["personalization"]["user"] == alice_id
    as_admin = chat(steered, user=bob_id, max_tokens=2)
    assert as_admin.json()["personalization"]["user"] == bob_id
    assert as_admin.json()["personalization"]["beta"] == 4.0
    unknown = chat(steered, user="nobody-here", max_tokens=2)
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "user"


def test_text_completion(steered: Service) -> None:
    response = steered.client.post(
        "/v1/completions",
        json={"model": "default", "prompt": "The quick brown fox", "max_tokens": 5, "personalization": {"weights": {}}},
        headers=steered.auth(),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "text_completion" and "text" in body["choices"][0]
    assert body["personalization"]["weights"] == {}


def test_streamed_chat_has_role_deltas_finish_usage_and_done(steered: Service) -> None:
    with steered.client.stream(
        "POST",
        "/v1/chat/completions",
        json={
            "model": "default",
            "messages": [{"role": "user", "content": "Hello"}],
            "max_tokens": 6,
            "seed": 2,
            "stream": True,
            "stream_options": {"include_usage": True},
            "personalization": {"weights": {"concise": 1.0}},
        },
        headers=steered.auth(),
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response.read().decode())
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[0]["personalization"]["head_versions"] == {"concise": "1"}
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finals) == 1
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] >= 1
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    whole = chat(
        steered,
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=6,
        seed=2,
        personalization={"weights": {"concise": 1.0}},
    ).json()
    assert streamed == whole["choices"][0]["message"]["content"]


def test_best_of_n_returns_one_answer(steered: Service) -> None:
    needs_weights = chat(steered, max_tokens=4, personalization={"method": "bon", "weights": {}})
    assert needs_weights.status_code == 422 and needs_weights.json()["error"]["param"] == "personalization.weights"


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"max_tokens": 100_000}, 422, "max_tokens"),
        ({"max_tokens": 0}, 422, "max_tokens"),
        ({"personalization": {"weights": {"nope": 1.0}}}, 422, "personalization.weights.nope"),
        ({"personalization": {"beta": 1000}}, 422, "personalization.beta"),
        ({"personalization": {"top_k": 0}}, 422, "personalization.top_k"),
        ({"personalization": {"top_k": 5000}}, 422, "personalization.top_k"),
        ({"personalization": {"weights": {"concise": 99}}}, 422, "personalization.weights.concise"),
        ({"personalization": {"method": "telepathy"}}, 422, "personalization.method"),
        ({"personalization": {"colour": "red"}}, 422, "personalization.colour"),
        ({"temperature": -1}, 422, "temperature"),
        ({"n": 9}, 422, "n"),  # at most 8 choices
        ({"model": "gpt-17"}, 404, "model"),
        ({"messages": []}, 422, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, 422, "messages.0.role"),
    ],
)
def test_invalid_requests_are_4xx_naming_the_field(
    steered: Service, body: dict[str, Any], status: int, param: str
) -> None:
    response = chat(steered, **body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["message"]


def test_unknown_objective_message_lists_valid_ones(steered: Service) -> None:
    error = chat(steered, personalization={"weights": {"nope": 1.0}}).json()["error"]
    assert "concise" in error["message"] and "helpful" in error["message"]


def test_nan_weight_in_request_is_refused(steered: Service) -> None:
    raw = (
        '{"model": "default", "messages": [{"role": "user", "content": "hi"}],'
        ' "personalization": {"weights": {"concise": NaN}}}'
    )
    response = steered.client.post(
        "/v1/chat/completions", content=raw, headers={**steered.auth(), "Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "personalization.weights.concise"


def test_prompt_over_context_is_422(steered: Service) -> None:
    long_prompt = "The quick brown fox jumps over the lazy dog. " * 200
    response = chat(steered, messages=[{"role": "user", "content": long_prompt}], max_tokens=16)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "context_length_exceeded"
    assert response.json()["error"]["param"] == "messages"


def test_malformed_json_is_400(steered: Service) -> None:
    response = steered.client.post(
        "/v1/chat/completions", content=b"{not json", headers={**steered.auth(), "Content-Type": "application/json"}
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "json_invalid"


def test_models_lists_backbone_and_default(steered: Service) -> None:
    ids = [m["id"] for m in steered.client.get("/v1/models", headers=steered.auth()).json()["data"]]
    assert ids == ["tiny-llama", "default"]
    assert chat(steered, model="tiny-llama", max_tokens=2).status_code == 200


async def _concurrent_chats(url: str, key: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        return await asyncio.gather(*(client.post("/v1/chat/completions", json=b) for b in bodies))


def _body(max_tokens: int, weights: dict[str, float]) -> dict[str, Any]:
    return {
        "model": "default",
        "messages": [{"role": "user", "content": "Tell me a story"}],
        "max_tokens": max_tokens,
        "personalization": {"weights": weights},
    }


@contextmanager
def decoder_held(scheduler: Scheduler) -> Iterator[None]:
    """Keep the decoder thread busy between batches (as a head change does) until the block exits:
    requests sent meanwhile wait in the queue, then start together."""
    release = threading.Event()
    busy = threading.Event()

    def hold() -> None:
        busy.set()
        release.wait(60)

    done = scheduler.call_between_batches(hold)
    busy.wait(10)
    try:
        yield
    finally:
        release.set()
        done.result(10)


def _in_background(fn: Callable[[], list[httpx.Response]]) -> tuple[threading.Thread, list[list[httpx.Response]]]:
    results: list[list[httpx.Response]] = []
    thread = threading.Thread(target=lambda: results.append(fn()))
    thread.start()
    return thread, results


@dataclass
class _Arrival:
    """What :func:`_second_arrives_while_first_runs` saw."""

    sizes: list[int]
    """Live requests at each batch event."""
    batches: int
    first: httpx.Response
    second: str


def _second_arrives_while_first_runs(service: Service, first: dict[str, Any], second: dict[str, Any]) -> _Arrival:
    """Send ``first``; once its batch has started (its first step held until ``second`` is queued), send
    ``second`` and wait for both."""
    scheduler = service.app.state.services.runtime.scheduler
    sizes: list[int] = []
    first_started = threading.Event()

    def observe(live: int) -> None:
        sizes.append(live)
        if len(sizes) == 1:
            first_started.set()
            wait_until(lambda: scheduler.depth == 1, what="the second request to be queued")

    scheduler.on_batch = observe
    before = scheduler.batches_run
    with LiveServer(service.app) as server:
        thread, results = _in_background(lambda: asyncio.run(_concurrent_chats(server.url, service.admin_key, [first])))
        assert first_started.wait(30)
        answer = _chat_text(chat(service, **second))
        thread.join(120)
    return _Arrival(sizes, scheduler.batches_run - before, results[0][0], answer)


def test_concurrent_requests_share_one_batch(steered: Service) -> None:
    weights = [{"concise": 1.0}, {"helpful": 1.0}, {"concise": -1.0, "helpful": 0.5}, {}]
    scheduler = steered.app.state.services.runtime.scheduler
    before = scheduler.batches_run
    with LiveServer(steered.app) as server:
        bodies = [_body(24, w) for w in weights * 2]
        with decoder_held(scheduler):
            thread, results = _in_background(
                lambda: asyncio.run(_concurrent_chats(server.url, steered.admin_key, bodies))
            )
            wait_until(lambda: scheduler.depth == 8, what="all 8 requests to be queued")
        thread.join(120)
    responses = results[0]
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    assert [r.json()["personalization"]["weights"] for r in responses] == weights * 2
    # Eight rows with different weight vectors, decoded in one batch.
    assert scheduler.batches_run - before == 1 and scheduler.largest_batch == 8


def _chat_text(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    content: str = response.json()["choices"][0]["message"]["content"]
    return content


def test_a_request_that_does_not_fit_the_row_budget_waits_for_room(
    start_service: Callable[..., Service], tiny_head_dir: Callable[..., Path]
) -> None:
    """Two rows allowed: a steered request (base row + its LoRA head's row) leaves no room for a plain
    one, which starts once the first has left; both decode as alone."""
    service = start_service(max_batch_rows=2)
    register_head(service, tiny_head_dir("concise", seed=1))
    long_body = {**_body(24, {"concise": 1.0}), "seed": 0}
    short_body = {**_body(6, {}), "seed": 5}
    seen = _second_arrives_while_first_runs(service, long_body, short_body)
    assert seen.sizes == [1, 1] and seen.batches == 2  # one after the other: never both live
    assert _chat_text(seen.first) == _chat_text(chat(service, **long_body))
    assert seen.second == _chat_text(chat(service, **short_body))


def test_a_light_request_joins_a_heavy_one_at_once_and_a_request_over_the_row_budget_is_refused(
    start_service: Callable[..., Service], tiny_head_dir: Callable[..., Path]
) -> None:
    """Six rows allowed: Best-of-5 (five rows) leaves room for a plain request, which joins it mid-decode
    (its wait is one step, and each of its steps carries at most the six rows) and leaves first; Best-of-7
    could only run alone, holding every other request back, and is refused."""
    service = start_service(max_batch_rows=6)
    register_head(service, tiny_head_dir("concise", seed=1))
    heavy = {**_body(48, {"concise": 1.0}), "seed": 0}
    heavy["personalization"] = {**heavy["personalization"], "method": "bon", "best_of": 5}
    light = {**_body(6, {}), "seed": 5}
    seen = _second_arrives_while_first_runs(service, heavy, light)
    assert seen.first.status_code == 200, seen.first.text
    assert seen.sizes == [1, 2] and seen.batches == 1
    assert seen.second == _chat_text(chat(service, **light))
    too_wide = {**heavy, "personalization": {**heavy["personalization"], "best_of": 7}}
    refused = chat(service, **too_wide)
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert error["code"] == "row_limit_exceeded" and error["param"] == "personalization.best_of"
    assert "7 sequence(s) x 1 row(s) = 7" in error["message"] and "at most 6" in error["message"]


def test_a_request_over_the_per_request_row_cap_is_refused(
    start_service: Callable[..., Service], tiny_head_dir: Callable[..., Path]
) -> None:
    service = start_service(max_batch_rows=64, max_request_rows=4)
    register_head(service, tiny_head_dir("concise", seed=1))
    body = {**_body(4, {"concise": 1.0}), "seed": 0}
    body["personalization"] = {**body["personalization"], "method": "bon", "best_of": 4}
    assert chat(service, **body).status_code == 200
    body["personalization"] = {**body["personalization"], "best_of": 5}
    refused = chat(service, **body)
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert error["code"] == "row_limit_exceeded" and "at most 4" in error["message"]


def test_request_joins_the_running_batch_and_decodes_as_alone(steered: Service) -> None:
    # seed 0 makes the tiny model ramble: the long answer runs all its 64 tokens
    long_body = {**_body(64, {"concise": 1.0}), "seed": 0}
    short_body = {**_body(8, {"helpful": 1.0, "concise": -0.5}), "seed": 5}
    seen = _second_arrives_while_first_runs(steered, long_body, short_body)
    # The short request joined the long one mid-decode (2 live), in the same batch, and left first.
    assert seen.sizes == [1, 2] and seen.batches == 1
    assert seen.first.json()["usage"]["completion_tokens"] == 64
    assert seen.second == _chat_text(chat(steered, **short_body))
    assert _chat_text(seen.first) == _chat_text(chat(steered, **long_body))


def test_head_change_waits_for_the_batch_to_drain(steered: Service) -> None:
    scheduler = steered.app.state.services.runtime.scheduler
    sizes: list[int] = []
    seen_by_control: list[tuple[int, int]] = []
    first_started = threading.Event()
    controls: list[Future[None]] = []

    def control() -> None:
        seen_by_control.append((len(sizes), scheduler.depth))

    def observe(live: int) -> None:
        sizes.append(live)
        if len(sizes) == 1:  # while the first request decodes, a head change and a request arrive
            controls.append(scheduler.call_between_batches(control))
            first_started.set()
            wait_until(lambda: scheduler.depth == 1, what="the second request to be queued")

    scheduler.on_batch = observe
    before = scheduler.batches_run
    with LiveServer(steered.app) as server:
        thread, results = _in_background(
            lambda: asyncio.run(_concurrent_chats(server.url, steered.admin_key, [{**_body(32, {}), "seed": 0}]))
        )
        assert first_started.wait(30)
        second = chat(steered, **{**_body(4, {"concise": 1.0}), "seed": 1})
        thread.join(120)
    controls[0].result(10)
    assert results[0][0].status_code == 200 and second.status_code == 200
    # The waiting request did not join: the batch drained, the change ran with it still queued,
    # then it started a batch of its own.
    assert seen_by_control == [(1, 1)] and sizes == [1, 1] and scheduler.batches_run - before == 2


def test_full_queue_answers_429(start_service: Callable[..., Service]) -> None:
    service = start_service(queue_size=2, rate_limit_per_minute=0)
    scheduler = service.app.state.services.runtime.scheduler
    with LiveServer(service.app) as server, decoder_held(scheduler):
        thread, results = _in_background(
            lambda: asyncio.run(_concurrent_chats(server.url, service.admin_key, [_body(4, {})] * 2))
        )
        wait_until(lambda: scheduler.depth == 2, what="the queue to fill")
        refused = asyncio.run(_concurrent_chats(server.url, service.admin_key, [_body(4, {})]))[0]
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "queue_full" and "Retry-After" in refused.headers
    thread.join(60)
    assert [r.status_code for r in results[0]] == [200, 200]


def _hang_up_after_headers(server: LiveServer, key: str, body: dict[str, Any], read_lines: int) -> None:
    with (
        httpx.Client(base_url=server.url, timeout=30) as client,
        client.stream(
            "POST", "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
        ) as response,
    ):
        assert response.status_code == 200
        lines = response.iter_lines()
        for _ in range(read_lines):
            next(lines)


def test_client_disconnect_mid_stream_frees_the_decoder(service: Service) -> None:
    scheduler = service.app.state.services.runtime.scheduler
    # seed 0 makes the tiny model ramble for ~300 tokens: the hang-up comes long before the end
    body = {**_body(400, {}), "stream": True, "seed": 0}
    with LiveServer(service.app) as server:
        _hang_up_after_headers(server, service.admin_key, body, read_lines=3)
        wait_until(lambda: scheduler.dropped >= 1, what="the scheduler to drop the abandoned request")
    full = chat(service, **{**body, "stream": False})
    assert full.json()["usage"]["completion_tokens"] > 100  # far more than the 3 lines read


def test_client_disconnect_while_queued_never_decodes(service: Service) -> None:
    scheduler = service.app.state.services.runtime.scheduler
    before = scheduler.batches_run
    with LiveServer(service.app) as server:
        with decoder_held(scheduler):
            _hang_up_after_headers(server, service.admin_key, {**_body(50, {}), "stream": True}, read_lines=0)
            wait_until(lambda: scheduler.depth == 0, what="the server to notice the hang-up")
        wait_until(lambda: scheduler.dropped >= 1, what="the queued request to be dropped")
    assert scheduler.batches_run == before


def test_rate_limit_per_key(start_service: Callable[..., Service]) -> None:
    service = start_service(rate_limit_per_minute=3)
    _, key = service.create_user()  # uses the admin key once
    codes = [service.client.get("/v1/users/me", headers=service.auth(key)).status_code for _ in range(5)]
    assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]
    limited = service.client.get("/v1/users/me", headers=service.auth(key))
    assert limited.json()["error"]["type"] == "rate_limit_error" and "Retry-After" in limited.headers


def test_streamed_text_completion(steered: Service) -> None:
    response = steered.client.post(
        "/v1/completions",
        json={"prompt": "The quick brown fox", "max_tokens": 5, "seed": 4, "stream": True},
        headers=steered.auth(),
    )
    assert response.status_code == 200
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "personalization" in chunks[0] and chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert "usage" not in chunks[0]  # only with stream_options.include_usage
