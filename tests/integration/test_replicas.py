"""Two app instances sharing one database (and Redis): a head registered on one serves on the other."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import Backend, Service, wait_until
from tests.integration.helpers import chat, register_head

pytestmark = pytest.mark.integration


def _loaded_heads(service: Service) -> dict[str, str]:
    heads: dict[str, str] = service.client.get("/readyz").json().get("heads", {})
    return heads


def test_head_registered_on_one_replica_is_served_by_the_other(
    backend: Backend, start_service: Callable[..., Service], tiny_head_dir: Callable[..., Path]
) -> None:
    # With Redis the other replica must follow the pub/sub event (periodic sync is off);
    # without Redis (SQLite) it is the periodic database sync that carries the change.
    interval = 3600.0 if backend.redis_url else 0.2
    first = start_service(head_sync_interval_s=interval)
    second = start_service(head_sync_interval_s=interval)
    assert first.app.state.services.replica_id != second.app.state.services.replica_id

    register_head(first, tiny_head_dir("concise", seed=1))
    wait_until(lambda: _loaded_heads(second) == {"concise": "1"}, what="the second replica to load the head")
    response = chat(second, second.admin_key, max_tokens=4, personalization={"weights": {"concise": 1.0}})
    assert response.status_code == 200, response.text
    assert response.json()["personalization"]["head_versions"] == {"concise": "1"}

    register_head(first, tiny_head_dir("concise", seed=2, version="2"))
    wait_until(lambda: _loaded_heads(second) == {"concise": "2"}, what="the second replica to switch versions")

    deactivated = first.client.patch("/v1/objectives/concise", json={"active": False}, headers=first.auth())
    assert deactivated.status_code == 200
    wait_until(lambda: _loaded_heads(second) == {}, what="the second replica to unload the head")
    refused = chat(second, second.admin_key, personalization={"weights": {"concise": 1.0}})
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "unknown_objective"


def test_profile_written_on_one_replica_is_read_fresh_on_the_other(start_service: Callable[..., Service]) -> None:
    first = start_service()
    second = start_service()
    user_id, key = first.create_user()
    for replica in (first, second):  # fill the cache on both paths
        assert replica.client.get(f"/v1/users/{user_id}/profile", headers=replica.auth(key)).json()["version"] == 1
    put = first.client.put(f"/v1/users/{user_id}/profile", json={"beta": 6.0, "version": 1}, headers=first.auth(key))
    assert put.status_code == 200
    read = second.client.get(f"/v1/users/{user_id}/profile", headers=second.auth(key)).json()
    assert (read["beta"], read["version"]) == (6.0, 2)
    stale = second.client.put(
        f"/v1/users/{user_id}/profile", json={"beta": 1.0, "version": 1}, headers=second.auth(key)
    )
    assert stale.status_code == 409
