"""Graceful shutdown: SIGTERM stops admitting work, and requests in flight still finish.

The server is `personalize serve`'s (uvicorn with the draining hook) in a thread; SIGTERM is
delivered through the same ``handle_exit`` uvicorn's signal handler calls. Requests are held in
flight by occupying the decoder until the shutdown has begun.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.main import create_app
from app.service_commands import draining_server
from personalize.db import Database, UserStore
from tests.integration.conftest import Backend, free_port, make_settings, tiny_engine_factory, wait_until
from tests.integration.helpers import sse_events

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("backend", ["sqlite"], indirect=True)]


def test_sigterm_drains_in_flight_requests_and_refuses_new_ones(backend: Backend, tmp_path: Path) -> None:
    settings = make_settings(backend, tmp_path / "data", shutdown_timeout_s=20.0)
    app = create_app(settings, engine_factory=tiny_engine_factory)
    port = free_port()
    server = draining_server(app, settings, host="127.0.0.1", port=port, log_level="warning")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: _status(f"{url}/readyz") == 200, what="the server to be ready")
    db = Database(settings.database_url)
    try:
        key = UserStore(db).create("drain-user").api_key
    finally:
        db.dispose()
    headers = {"Authorization": f"Bearer {key}"}
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    services = app.state.services
    release = threading.Event()
    held = services.runtime.scheduler.call_between_batches(lambda: release.wait(60))
    wait_until(held.running, what="the decoder to be held")

    results: dict[str, Any] = {}

    def send(name: str, stream: bool) -> None:
        with httpx.Client(timeout=60) as client:
            results[name] = client.post(f"{url}/v1/chat/completions", json={**body, "stream": stream}, headers=headers)

    senders = [threading.Thread(target=send, args=(name, name == "stream")) for name in ("plain", "stream")]
    for sender in senders:
        sender.start()
    wait_until(lambda: services.runtime.scheduler.depth == 2, what="both requests to be queued")

    started = time.monotonic()
    server.handle_exit(signal.SIGTERM, None)
    assert services.draining
    wait_until(lambda: _status(f"{url}/readyz") is None, what="the listener to close")
    release.set()
    for sender in senders:
        sender.join(30)
    thread.join(30)
    assert not thread.is_alive() and time.monotonic() - started < settings.shutdown_timeout_s

    assert results["plain"].status_code == 200, results["plain"].text
    assert results["plain"].json()["choices"][0]["finish_reason"] in ("stop", "length")
    events = sse_events(results["stream"].text)
    assert events[-1] == "[DONE]" and any(e["choices"] and e["choices"][0]["finish_reason"] for e in events[:-1])


def _status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.TransportError:
        return None


def test_a_draining_app_refuses_new_completions_with_503(start_service: Callable[..., Any]) -> None:
    service = start_service()
    service.app.state.services.begin_drain()
    refused = service.client.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}, headers=service.auth()
    )
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
    assert refused.headers["Retry-After"].isdigit()
    ready = service.client.get("/readyz")
    assert ready.status_code == 503 and "shutting down" in ready.json()["problems"]
