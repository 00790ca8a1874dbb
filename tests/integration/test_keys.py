"""API keys: rotate, revoke, expire and list them, over HTTP and the CLI, across two replicas.

With PostgreSQL + Redis the second replica must learn of a change from the Redis
notice (its auth cache TTL is set to the 30 s maximum, far longer than the wait
allowed here); with SQLite and no Redis it is the cache TTL that bounds it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from typer.testing import CliRunner

from personalize.db.cli import users_app
from tests.integration.conftest import Backend, Service, wait_until

pytestmark = pytest.mark.integration

SHORT_TTL_S = 1.0


def _replica_settings(backend: Backend) -> dict[str, Any]:
    if backend.redis_url:  # only the notice can make the other replica forget within the test's wait
        return {"auth_cache_ttl_s": 30.0, "auth_cache_stale_s": 30.0}
    return {"auth_cache_ttl_s": SHORT_TTL_S, "auth_cache_stale_s": SHORT_TTL_S}


def _bound_s(backend: Backend) -> float:
    return 5.0 if backend.redis_url else SHORT_TTL_S + 5.0


def _me(service: Service, key: str) -> int:
    return service.client.get("/v1/users/me", headers=service.auth(key)).status_code


def _refused_within(service: Service, key: str, bound_s: float) -> None:
    wait_until(lambda: _me(service, key) == 401, timeout_s=bound_s, what="the other replica to refuse the key")


def test_rotate_and_revoke_reach_both_replicas(backend: Backend, start_service: Callable[..., Service]) -> None:
    first = start_service(engine_factory=None, **_replica_settings(backend))
    second = start_service(engine_factory=None, **_replica_settings(backend))
    user_id, old_key = first.create_user()
    assert _me(first, old_key) == _me(second, old_key) == 200  # both replicas now cache the key

    # The user rotates their own key on the first replica.
    rotated = first.client.post(f"/v1/users/{user_id}/keys/rotate", json={}, headers=first.auth(old_key))
    assert rotated.status_code == 201, rotated.text
    new_key = rotated.json()["api_key"]
    assert [k["status"] for k in rotated.json()["retired"]] == ["revoked"]
    assert _me(first, old_key) == 401  # at once on the replica that changed it
    _refused_within(second, old_key, _bound_s(backend))
    assert _me(first, new_key) == _me(second, new_key) == 200

    # An admin revokes every key of the user on the second replica.
    revoked = second.client.delete(f"/v1/users/{user_id}/keys", headers=second.auth())
    assert revoked.status_code == 200, revoked.text
    [gone] = revoked.json()["data"]
    assert new_key.startswith(gone["prefix"]) and gone["status"] == "revoked"
    assert _me(second, new_key) == 401
    _refused_within(first, new_key, _bound_s(backend))

    audit = first.client.get("/v1/audit", headers=first.auth()).json()["data"]
    actions = [(e["action"], e["target"]) for e in audit if e["target"] == user_id]
    assert ("key.rotate", user_id) in actions and ("key.revoke", user_id) in actions
    rotate = next(e for e in audit if e["action"] == "key.rotate" and e["target"] == user_id)
    assert rotate["actor_id"] == user_id and rotate["detail"]["grace_s"] == 0


def test_listing_keys_never_shows_secrets_and_is_owner_or_admin(start_service: Callable[..., Service]) -> None:
    service = start_service(engine_factory=None)
    user_id, key = service.create_user()
    other_id, other_key = service.create_user()
    rotated = service.client.post(f"/v1/users/{user_id}/keys/rotate", json={}, headers=service.auth(key)).json()
    listing = service.client.get(f"/v1/users/{user_id}/keys", headers=service.auth(rotated["api_key"]))
    assert listing.status_code == 200, listing.text
    text = listing.text
    assert key not in text and rotated["api_key"] not in text and "sha256" not in text
    assert [k["status"] for k in listing.json()["data"]] == ["revoked", "active"]
    assert service.client.get(f"/v1/users/{user_id}/keys", headers=service.auth(other_key)).status_code == 403
    refused = service.client.delete(f"/v1/users/{user_id}/keys", headers=service.auth(other_key))
    assert refused.status_code == 403 and refused.json()["error"]["param"] == "user"
    assert service.client.get(f"/v1/users/{other_id}/keys", headers=service.auth()).status_code == 200  # admin
    assert service.client.get("/v1/audit", headers=service.auth(other_key)).status_code == 403
    missing = service.client.delete(f"/v1/users/{user_id}/keys/nope", headers=service.auth())
    assert missing.status_code == 404


def test_grace_period_keeps_the_old_key_until_it_ends(start_service: Callable[..., Service]) -> None:
    service = start_service(engine_factory=None)
    user_id, old_key = service.create_user()
    assert _me(service, old_key) == 200
    start = time.monotonic()
    rotated = service.client.post(f"/v1/users/{user_id}/keys/rotate", json={"grace_seconds": 2}, headers=service.auth())
    assert rotated.status_code == 201, rotated.text
    retired = rotated.json()["retired"]
    assert [k["status"] for k in retired] == ["active"] and retired[0]["expires_at"] is not None
    assert _me(service, old_key) == 200 and _me(service, rotated.json()["api_key"]) == 200
    wait_until(lambda: _me(service, old_key) == 401, timeout_s=10, what="the grace period to end")
    assert time.monotonic() - start >= 2.0
    assert _me(service, rotated.json()["api_key"]) == 200


def test_a_key_with_an_expiry_stops_working_then(start_service: Callable[..., Service]) -> None:
    service = start_service(engine_factory=None)
    created = service.client.post(
        "/v1/users", json={"name": "short-lived", "expires_in_seconds": 1}, headers=service.auth()
    )
    assert created.status_code == 201, created.text
    key = created.json()["api_key"]
    assert _me(service, key) == 200
    wait_until(lambda: _me(service, key) == 401, timeout_s=10, what="the key to expire")
    bad = service.client.post(
        f"/v1/users/{created.json()['id']}/keys/rotate", json={"grace_seconds": -1}, headers=service.auth()
    )
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "grace_seconds"


def test_cli_rotate_and_revoke_reach_a_running_replica(backend: Backend, start_service: Callable[..., Service]) -> None:
    service = start_service(engine_factory=None, **_replica_settings(backend))
    user_id, old_key = service.create_user(name="cli-user")
    assert _me(service, old_key) == 200
    env = {
        "PERSONALIZE_DATA_DIR": str(service.settings.data_dir),
        "DATABASE_URL": service.settings.database_url,
        "REDIS_URL": backend.redis_url or "",
        "PERSONALIZE_REDIS_PREFIX": backend.redis_prefix,
    }
    runner = CliRunner()
    rotated = runner.invoke(users_app, ["rotate-key", "cli-user", "--json"], env=env)
    assert rotated.exit_code == 0, rotated.output
    new_key = json.loads(rotated.output)["api_key"]
    _refused_within(service, old_key, _bound_s(backend))
    assert _me(service, new_key) == 200

    listed = runner.invoke(users_app, ["keys", user_id], env=env)
    assert listed.exit_code == 0 and listed.output.count("revoked") == 1 and new_key not in listed.output

    revoked = runner.invoke(users_app, ["revoke", user_id], env=env)
    assert revoked.exit_code == 0 and "revoked 1 key" in revoked.output, revoked.output
    _refused_within(service, new_key, _bound_s(backend))
    unknown = runner.invoke(users_app, ["revoke", "nobody-here"], env=env)
    assert unknown.exit_code == 1 and "no user" in unknown.output
