"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import Service, wait_until
from tests.integration.helpers import chat, register_head

pytestmark = pytest.mark.integration


def test_healthz_and_readyz(service: Service) -> None:
    assert service.client.get("/healthz").json() == {"status": "ok"}
    ready = service.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["model"] == "tiny-llama"


def test_not_ready_without_a_model(start_service: Callable[..., Service]) -> None:
    service = start_service(engine_factory=None)
    assert service.client.get("/healthz").status_code == 200
    ready = service.client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["status"] == "not ready"
    response = chat(service, max_tokens=2)
    assert response.status_code == 503 and response.json()["error"]["code"] == "not_ready"
    # Everything that does not decode still works.
    user_id, key = service.create_user()
    assert service.client.get(f"/v1/users/{user_id}/profile", headers=service.auth(key)).status_code == 200


def test_metrics_count_requests_tokens_objectives_and_queue(
    service: Service, tiny_head_dir: Callable[..., Path]
) -> None:
    register_head(service, tiny_head_dir("concise", seed=1))
    assert chat(service, max_tokens=3, personalization={"weights": {"concise": 1.0}}).status_code == 200
    text = service.client.get("/metrics").text
    assert 'personalize_http_requests_total{method="POST",route="/v1/chat/completions",status="200"} 1.0' in text
    assert 'personalize_objective_requests_total{objective="concise"} 1.0' in text
    assert 'personalize_tokens_total{kind="completion"}' in text
    assert "personalize_queue_depth 0.0" in text
    assert "personalize_http_request_duration_seconds_bucket" in text
    assert "personalize_batch_size_count 1.0" in text


def test_metrics_report_the_running_batchs_kv_cache(service: Service, tiny_head_dir: Callable[..., Path]) -> None:
    register_head(service, tiny_head_dir("concise", seed=1))
    seen: list[tuple[float, float]] = []

    def cache_figures() -> tuple[float, float]:
        lines = service.client.get("/metrics").text.splitlines()
        values = {line.split()[0]: float(line.split()[1]) for line in lines if line.startswith("personalize_kv_")}
        return values["personalize_kv_cache_tokens"], values["personalize_kv_cache_bytes"]

    done = threading.Event()

    def long_request() -> None:
        chat(service, max_tokens=200, seed=0, ignore_eos=True, personalization={"weights": {"concise": 1.0}})
        done.set()

    thread = threading.Thread(target=long_request)
    thread.start()
    wait_until(lambda: done.is_set() or (seen.append(cache_figures()) or seen[-1][0] > 0), what="a live cache")
    thread.join(120)
    tokens, nbytes = max(seen)
    assert tokens > 0 and nbytes >= tokens  # positions held, bytes allocated
    wait_until(lambda: cache_figures() == (0.0, 0.0), what="the cache to be released")
