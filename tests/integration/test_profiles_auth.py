"""Users, API keys and profiles with optimistic concurrency, on both backends."""

from __future__ import annotations

import pytest

from tests.integration.conftest import Service

pytestmark = pytest.mark.integration


def test_user_created_once_with_a_key_that_authenticates(service: Service) -> None:
    user_id, key = service.create_user("alice")
    me = service.client.get("/v1/users/me", headers=service.auth(key))
    assert me.status_code == 200
    assert me.json()["id"] == user_id and me.json()["role"] == "user"
    assert "api_key" not in me.json()
    again = service.client.post("/v1/users", json={"name": "alice"}, headers=service.auth())
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "already_exists"


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer pz-wrong"}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer "}],
)
def test_missing_or_wrong_key_is_401(service: Service, headers: dict[str, str]) -> None:
    response = service.client.get("/v1/objectives", headers=headers)
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["type"] == "authentication_error"
    assert set(error) == {"message", "type", "param", "code"}


def test_profile_round_trip_and_lost_update_is_409(service: Service) -> None:
    user_id, key = service.create_user()
    first = service.client.get(f"/v1/users/{user_id}/profile", headers=service.auth(key))
    assert first.status_code == 200
    assert first.json()["version"] == 1 and first.headers["ETag"] == '"1"'

    body = {"weights": {}, "beta": 2.5, "method": "base", "top_k": 10}
    put = service.client.put(
        f"/v1/users/{user_id}/profile", json=body, headers={**service.auth(key), "If-Match": '"1"'}
    )
    assert put.status_code == 200, put.text
    assert put.json()["version"] == 2 and put.json()["beta"] == 2.5

    # A second writer that also read version 1 must not silently undo the first write.
    stale = service.client.put(
        f"/v1/users/{user_id}/profile", json={**body, "beta": 0.5, "version": 1}, headers=service.auth(key)
    )
    assert stale.status_code == 409
    assert stale.json()["error"]["code"] == "version_conflict"
    current = service.client.get(f"/v1/users/{user_id}/profile", headers=service.auth(key)).json()
    assert current["beta"] == 2.5 and current["version"] == 2


def test_every_read_after_a_write_sees_the_write(service: Service) -> None:
    """The Redis cache (when there is one) is filled by the reads and must follow every PUT."""
    user_id, key = service.create_user()
    version = service.client.get(f"/v1/users/{user_id}/profile", headers=service.auth(key)).json()["version"]
    for beta in (0.5, 1.5, 3.0, 7.0):
        put = service.client.put(
            f"/v1/users/{user_id}/profile",
            json={"beta": beta, "version": version},
            headers=service.auth(key),
        )
        assert put.status_code == 200, put.text
        version = put.json()["version"]
        read = service.client.get(f"/v1/users/{user_id}/profile", headers=service.auth(key)).json()
        assert (read["beta"], read["version"]) == (beta, version)


def test_user_cannot_read_or_write_another_users_profile(service: Service) -> None:
    alice_id, alice_key = service.create_user()
    bob_id, bob_key = service.create_user()
    assert service.client.get(f"/v1/users/{bob_id}/profile", headers=service.auth(alice_key)).status_code == 403
    put = service.client.put(f"/v1/users/{bob_id}/profile", json={"beta": 3.0}, headers=service.auth(alice_key))
    assert put.status_code == 403 and put.json()["error"]["type"] == "permission_error"
    assert service.client.get(f"/v1/users/{bob_id}/profile", headers=service.auth(bob_key)).json()["beta"] == 1.0
    # Admins may.
    assert service.client.get(f"/v1/users/{alice_id}/profile", headers=service.auth()).status_code == 200


def test_users_cannot_create_users_or_register_heads(service: Service) -> None:
    _, key = service.create_user()
    created = service.client.post("/v1/users", json={"name": "mallory", "role": "admin"}, headers=service.auth(key))
    assert created.status_code == 403
    upload = service.client.post("/v1/objectives", files=[("files", ("head.json", b"{}"))], headers=service.auth(key))
    assert upload.status_code == 403
    patch = service.client.patch("/v1/objectives/anything", json={"active": False}, headers=service.auth(key))
    assert patch.status_code == 403
    assert service.client.delete("/v1/objectives/anything", headers=service.auth(key)).status_code == 403


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"beta": 99.0}, "beta"),
        ({"beta": -1}, "beta"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": 1000}, "top_k"),
        ({"method": "magic"}, "method"),
        ({"weights": {"nope": 1.0}}, "weights.nope"),
        ({"weights": {"Bad Name!": 1.0}}, "weights.Bad Name!.[key]"),
        ({"version": -3}, "version"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_bad_profile_values_are_422_naming_the_field(service: Service, body: dict[str, object], param: str) -> None:
    user_id, key = service.create_user()
    response = service.client.put(f"/v1/users/{user_id}/profile", json=body, headers=service.auth(key))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == param


def test_nan_and_infinite_weights_are_refused(service: Service) -> None:
    user_id, key = service.create_user()
    for raw in ('{"weights": {"x": NaN}}', '{"beta": Infinity}', '{"weights": {"x": -Infinity}}'):
        response = service.client.put(
            f"/v1/users/{user_id}/profile",
            content=raw,
            headers={**service.auth(key), "Content-Type": "application/json"},
        )
        assert response.status_code == 422, (raw, response.text)


def test_malformed_json_is_400(service: Service) -> None:
    user_id, key = service.create_user()
    response = service.client.put(
        f"/v1/users/{user_id}/profile",
        content=b'{"beta": ',
        headers={**service.auth(key), "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "json_invalid"


def test_if_match_must_be_a_version(service: Service) -> None:
    user_id, key = service.create_user()
    response = service.client.put(
        f"/v1/users/{user_id}/profile", json={}, headers={**service.auth(key), "If-Match": "banana"}
    )
    assert response.status_code == 422 and response.json()["error"]["param"] == "If-Match"
