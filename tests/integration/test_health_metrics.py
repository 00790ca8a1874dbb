"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import Service
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
