"""Bounded inputs, unsupported OpenAI fields, the work cap, per-key requests in flight, deadlines,
and /readyz on a dead or stuck decoder.

A request is held in flight deterministically by occupying the decoder thread with a call that
waits on an event (``Scheduler.call_between_batches``): requests queue behind it until it is set.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from app.services import ModelBundle
from personalize.decoding.engine import Engine
from personalize.settings import Settings
from tests.integration.conftest import Service, wait_until
from tests.integration.helpers import chat, register_head, sse_events
from tests.tiny import build_tiny_base

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("backend", ["sqlite"], indirect=True)]

HI = [{"role": "user", "content": "hi"}]


def _error(response: Any) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    return error


@contextmanager
def decoder_held(service: Service) -> Iterator[threading.Event]:
    """Keep the decoder thread busy until the block ends (requests wait in its queue meanwhile)."""
    release = threading.Event()
    runtime = service.app.state.services.runtime
    held = runtime.scheduler.call_between_batches(lambda: release.wait(60))
    wait_until(lambda: held.running(), what="the decoder to run the holding call")
    try:
        yield release
    finally:
        release.set()
        held.result(60)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"stop": ["x"] * 17}, "stop"),
        ({"stop": "y" * 257}, "stop"),
        ({"stop": ["ok", ""]}, "stop"),
        ({"messages": HI * 257}, "messages"),
        ({"messages": [{"role": "user", "content": "z" * 65_537}]}, "messages.0.content"),
        ({"user": "u" * 257}, "user"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
    ],
)
def test_oversized_or_unsupported_fields_are_refused_by_name(
    service: Service, body: dict[str, Any], param: str
) -> None:
    payload = {"messages": HI, "max_tokens": 2, **body}
    response = service.client.post("/v1/chat/completions", json=payload, headers=service.auth())
    assert response.status_code == 422, response.text
    assert _error(response)["param"] == param and _error(response)["type"] == "invalid_request_error"


def test_neutral_values_of_unsupported_fields_and_limits_at_the_edge_pass(service: Service) -> None:
    ok = chat(
        service,
        max_tokens=2,
        stop=["a" * 256] * 16,
        presence_penalty=0,
        tool_choice="none",
        response_format={"type": "text"},
        modalities=["text"],
        store=False,
    )
    assert ok.status_code == 200, ok.text
    text = service.client.post(
        "/v1/completions", json={"prompt": "p" * 65_537, "max_tokens": 2}, headers=service.auth()
    )
    assert text.status_code == 422 and _error(text)["param"] == "prompt"
    echo = service.client.post("/v1/completions", json={"prompt": "p", "echo": True}, headers=service.auth())
    assert echo.status_code == 422 and _error(echo)["param"] == "echo"


def test_the_work_cap_names_the_field_that_multiplies_the_work(
    start_service: Callable[..., Service], tiny_head_dir: Callable[..., Path], cheap_rewards: None
) -> None:
    service = start_service(max_request_work=4_000)
    register_head(service, tiny_head_dir("concise", seed=1, reward="brevity"))
    over = {
        "personalization.aisp": {"method": "aisp", "aisp": {"samples": 8, "iterations": 4}},
        "personalization.best_of": {"method": "bon", "best_of": 16, "weights": {"concise": 1.0}},
        "personalization.ivg": {"method": "ivg", "ivg": {"candidates": 4, "beams": 4}},
    }
    for param, personalization in over.items():
        response = chat(service, max_tokens=256, personalization=personalization)
        assert response.status_code == 422, response.text
        error = _error(response)
        assert (error["param"], error["code"]) == (param, "work_limit_exceeded"), error
        assert "4000" in error["message"]
    # A LoRA head adds a row per sequence: with the cap just under 2 x (prompt + 64), a steered request
    # (2 rows) is over and a plain one (1 row) is not.
    prompt = chat(service, max_tokens=2).json()["usage"]["prompt_tokens"]
    tight = start_service(max_request_work=2 * (prompt + 64) - 1)
    steered = chat(tight, max_tokens=64, personalization={"weights": {"concise": 1.0}})
    assert steered.status_code == 422 and _error(steered)["param"] == "max_tokens"
    assert "2 row(s)" in _error(steered)["message"]
    assert chat(tight, max_tokens=64).status_code == 200
    aisp = {"method": "aisp", "weights": {"concise": 1.0}, "aisp": {"samples": 2, "iterations": 2}}
    small = chat(service, max_tokens=4, personalization=aisp)
    assert small.status_code == 200, small.text


def test_a_key_over_its_in_flight_limit_gets_429_with_headers(start_service: Callable[..., Service]) -> None:
    service = start_service(max_in_flight_per_key=1)
    _, key = service.create_user()
    _, other_key = service.create_user()
    results: list[Any] = []
    with decoder_held(service):
        first = threading.Thread(target=lambda: results.append(chat(service, key, max_tokens=2)))
        first.start()
        limiter = service.app.state.services.in_flight
        wait_until(lambda: sum(limiter._running.values()) == 1, what="the first request to be in flight")
        refused = chat(service, key, max_tokens=2)
        assert refused.status_code == 429, refused.text
        assert refused.headers["Retry-After"] == "1"
        assert refused.headers["x-ratelimit-limit-concurrent-requests"] == "1"
        assert refused.headers["x-ratelimit-remaining-concurrent-requests"] == "0"
        assert _error(refused)["code"] == "too_many_requests_in_flight"
        other = threading.Thread(target=lambda: results.append(chat(service, other_key, max_tokens=2)))
        other.start()  # another key is not limited by this one's requests
        wait_until(lambda: sum(limiter._running.values()) == 2, what="the other key's request to be admitted")
    first.join(60)
    other.join(60)
    assert [r.status_code for r in results] == [200, 200]
    assert chat(service, key, max_tokens=2).status_code == 200  # the slot came back


def test_a_request_past_its_deadline_gets_504_or_an_error_event(start_service: Callable[..., Service]) -> None:
    service = start_service(request_timeout_s=0.5)
    scheduler = service.app.state.services.runtime.scheduler
    with decoder_held(service):
        late = chat(service, max_tokens=2)
        streamed = chat(service, max_tokens=2, stream=True)
    assert late.status_code == 504 and _error(late)["code"] == "timeout", late.text
    assert streamed.status_code == 200
    events = sse_events(streamed.text)
    assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "timeout"
    wait_until(lambda: scheduler.dropped >= 2, what="the expired requests to be dropped, not decoded")
    assert chat(service, max_tokens=2).status_code == 200


def test_readyz_reports_a_stuck_decoder(start_service: Callable[..., Service]) -> None:
    service = start_service(decoder_stall_s=0.2)
    with decoder_held(service):
        chat_thread = threading.Thread(target=lambda: chat(service, max_tokens=2))
        chat_thread.start()

        def stuck() -> bool:
            ready = service.client.get("/readyz")
            return ready.status_code == 503 and any("stuck" in p for p in ready.json()["problems"])

        wait_until(stuck, what="/readyz to report the stuck decoder")
    chat_thread.join(60)
    wait_until(lambda: service.client.get("/readyz").status_code == 200, what="/readyz to recover")


class _DyingEngine(Engine):
    def open_batch(self, reward: Any = None) -> Any:
        raise RuntimeError("simulated decoder crash")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_readyz_reports_a_dead_decoder_and_requests_get_503(start_service: Callable[..., Service]) -> None:
    def factory(_settings: Settings) -> ModelBundle:
        base = build_tiny_base()
        return ModelBundle(base, _DyingEngine(base))

    service = start_service(engine_factory=factory, request_timeout_s=2.0)
    first = chat(service, max_tokens=2)  # kills the decoder thread; its deadline answers it
    assert first.status_code == 504, first.text
    ready = service.client.get("/readyz")
    assert ready.status_code == 503 and "decoder: the thread is not running" in ready.json()["problems"]
    after = chat(service, max_tokens=2)
    assert after.status_code == 503 and _error(after)["code"] == "decoder_unavailable"


def test_a_failed_model_load_is_retried_with_backoff(start_service: Callable[..., Service]) -> None:
    attempts: list[int] = []

    def flaky(_settings: Settings) -> ModelBundle:
        attempts.append(1)
        if len(attempts) < 3:
            raise OSError(f"model files not there yet (try {len(attempts)})")
        base = build_tiny_base()
        return ModelBundle(base, Engine(base))

    service = start_service(engine_factory=flaky, wait_ready=False, model_load_retry_s=0.05)
    wait_until(lambda: service.client.get("/readyz").status_code == 200, what="the third load to succeed")
    assert len(attempts) == 3 and service.app.state.services.load_attempts == 3
    assert chat(service, max_tokens=2).status_code == 200
