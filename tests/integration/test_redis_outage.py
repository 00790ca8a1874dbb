"""Redis going away (stopped or frozen) mid-test: the service keeps serving from the database."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import RedisProcess, Service
from tests.integration.helpers import chat, register_head

pytestmark = pytest.mark.integration


def test_redis_stopped_mid_test_still_serves(
    redis_process: RedisProcess, start_service: Callable[..., Service], tiny_head_dir: Callable[..., Path]
) -> None:
    service = start_service(redis_url=redis_process.url, redis_retry_s=0)
    register_head(service, tiny_head_dir("concise", seed=1))
    user_id, key = service.create_user()
    profile_url = f"/v1/users/{user_id}/profile"
    assert service.client.get(profile_url, headers=service.auth(key)).json()["version"] == 1  # cached now
    assert service.client.get("/readyz").json()["redis"] == "ok"

    redis_process.stop()

    assert service.client.get(profile_url, headers=service.auth(key)).status_code == 200
    put = service.client.put(profile_url, json={"beta": 2.0, "version": 1}, headers=service.auth(key))
    assert put.status_code == 200, put.text
    assert service.client.get(profile_url, headers=service.auth(key)).json()["beta"] == 2.0
    response = chat(service, key, max_tokens=3, personalization={"weights": {"concise": 1.0}})
    assert response.status_code == 200, response.text
    ready = service.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["redis"].startswith("unavailable")
    patched = service.client.patch("/v1/objectives/concise", json={"active": False}, headers=service.auth())
    assert patched.status_code == 200  # the local change applies; the announcement is skipped

    redis_process.start()  # same port, empty
    assert service.client.get(profile_url, headers=service.auth(key)).json()["beta"] == 2.0
    assert service.client.get("/readyz").json()["redis"] == "ok"


def test_write_during_a_freeze_never_leaves_a_stale_cached_profile(
    redis_process: RedisProcess, start_service: Callable[..., Service]
) -> None:
    """Redis frozen (SIGSTOP) keeps its data: the old cached profile must not come back after a write."""
    service = start_service(redis_url=redis_process.url, redis_retry_s=0)
    user_id, key = service.create_user()
    profile_url = f"/v1/users/{user_id}/profile"
    assert service.client.get(profile_url, headers=service.auth(key)).json()["beta"] == 1.0  # cached
    assert redis_process.process is not None
    pid = redis_process.process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        put = service.client.put(profile_url, json={"beta": 5.0, "version": 1}, headers=service.auth(key))
        assert put.status_code == 200, put.text
    finally:
        os.kill(pid, signal.SIGCONT)
    read = service.client.get(profile_url, headers=service.auth(key)).json()
    assert (read["beta"], read["version"]) == (5.0, 2)
