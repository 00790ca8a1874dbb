"""The service over a remote base model: steering through the API, the upstream's failures as 502/504 in the
OpenAI error shape, /readyz while it is down, recovery without a restart. The upstream is an in-process one
built from a tiny model whose outages the test switches on and off."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from app.services import ModelBundle
from personalize.decoding.engine import Engine
from personalize.remote.engine import RemoteEngine
from personalize.settings import Settings
from tests.integration.conftest import Service, wait_until
from tests.integration.helpers import chat, register_head, sse_events
from tests.remote_fake import ModelUpstream
from tests.tiny import build_tiny_base

pytestmark = pytest.mark.integration


@pytest.fixture
def remote(start_service: Callable[..., Service], tiny_head_dir: Callable[..., Path]) -> tuple[Service, ModelUpstream]:
    upstream = ModelUpstream(build_tiny_base())

    def factory(_settings: Settings) -> ModelBundle:
        base = build_tiny_base()
        return ModelBundle(base, RemoteEngine(Engine(base), upstream))

    service = start_service(engine_factory=factory)
    register_head(service, tiny_head_dir("concise", seed=1))
    return service, upstream


def test_requests_are_steered_through_the_upstream(remote: tuple[Service, ModelUpstream]) -> None:
    service, upstream = remote
    response = chat(service, max_tokens=8, seed=2, personalization={"weights": {"concise": 1.0}, "chunk_tokens": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    compute = body["compute"]
    assert compute["upstream_calls"] >= 1 and compute["accepted_tokens"] <= compute["upstream_tokens"]
    assert body["personalization"]["chunk_tokens"] == 3
    assert all(r.max_tokens <= 3 for r in upstream.requests)  # the chunk length asked for
    streamed = chat(service, max_tokens=8, seed=2, stream=True, personalization={"weights": {"concise": 1.0}})
    events = sse_events(streamed.text)
    assert events[-1] == "[DONE]" and any(e["choices"] and e["choices"][0]["delta"].get("content") for e in events[:-1])
    assert service.client.get("/readyz").json()["upstream"] == upstream.name
    refused = chat(service, max_tokens=4, personalization={"weights": {"concise": 1.0}, "method": "ivg"})
    assert refused.status_code == 422 and "remote base model" in refused.json()["error"]["message"]


def test_upstream_outage_is_a_502_then_recovers_without_a_restart(remote: tuple[Service, ModelUpstream]) -> None:
    service, upstream = remote
    upstream.down = True
    failed = chat(service, max_tokens=6, personalization={"weights": {"concise": 1.0}})
    assert failed.status_code == 502, failed.text
    error = failed.json()["error"]
    assert error["code"] == "upstream_error" and upstream.name in error["message"]
    wait_until(lambda: service.client.get("/readyz").status_code == 503, what="/readyz to report the upstream")
    assert any("upstream" in p for p in service.client.get("/readyz").json()["problems"])
    upstream.down, upstream.timing_out = False, True
    timed_out = chat(service, max_tokens=6, personalization={"weights": {"concise": 1.0}})
    assert timed_out.status_code == 504 and timed_out.json()["error"]["code"] == "upstream_timeout"
    upstream.timing_out = False
    wait_until(lambda: service.client.get("/readyz").status_code == 200, what="/readyz to recover")
    assert chat(service, max_tokens=6, personalization={"weights": {"concise": 1.0}}).status_code == 200
