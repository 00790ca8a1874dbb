"""Registering heads over HTTP: validation, hot-loading, activation, deletion."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from personalize.db import Database, HeadStore
from personalize.db.artifacts import register_head_directory
from personalize.db.migrate import upgrade
from personalize.heads import new_head, save_head
from tests.integration.conftest import Backend, Service, make_settings
from tests.integration.helpers import chat, head_files, register_head
from tests.tiny import build_tiny_base

pytestmark = pytest.mark.integration


def test_uploaded_head_is_listed_loaded_and_steers(service: Service, tiny_head_dir: Callable[..., Path]) -> None:
    body = register_head(service, tiny_head_dir("concise", seed=1))
    assert body["name"] == "concise" and body["version"] == "1" and body["loaded"] is True
    assert body["calibration"]["scale"] > 0

    listing = service.client.get("/v1/objectives", headers=service.auth()).json()
    assert listing["object"] == "list"
    assert [o["name"] for o in listing["data"]] == ["concise"]
    assert {"name", "description", "version", "calibration"} <= set(listing["data"][0])

    response = chat(service, max_tokens=8, seed=3, personalization={"weights": {"concise": 1.0}, "beta": 2.0})
    assert response.status_code == 200, response.text
    applied = response.json()["personalization"]
    assert applied["weights"] == {"concise": 1.0} and applied["beta"] == 2.0
    assert applied["head_versions"] == {"concise": "1"}


def test_same_head_twice_is_idempotent_and_new_version_replaces(
    service: Service, tiny_head_dir: Callable[..., Path]
) -> None:
    first = register_head(service, tiny_head_dir("concise", seed=1))
    again = register_head(service, tiny_head_dir("concise", seed=1))
    assert first["versions"] == again["versions"]
    updated = register_head(service, tiny_head_dir("concise", seed=2, version="2"))
    assert updated["version"] == "2" and [v["active"] for v in updated["versions"]] == [False, True]
    response = chat(service, max_tokens=4, personalization={"weights": {"concise": 0.5}})
    assert response.json()["personalization"]["head_versions"] == {"concise": "2"}


def test_other_contents_under_an_existing_version_is_409(service: Service, tiny_head_dir: Callable[..., Path]) -> None:
    register_head(service, tiny_head_dir("concise", seed=1))
    clash = service.client.post(
        "/v1/objectives", files=head_files(tiny_head_dir("concise", seed=9)), headers=service.auth()
    )
    assert clash.status_code == 409


def test_deactivate_unloads_and_unknown_objective_lists_valid_ones(
    service: Service, tiny_head_dir: Callable[..., Path]
) -> None:
    register_head(service, tiny_head_dir("concise", seed=1))
    register_head(service, tiny_head_dir("helpful", kind="linear", seed=2))
    patched = service.client.patch("/v1/objectives/concise", json={"active": False}, headers=service.auth())
    assert patched.status_code == 200 and patched.json()["active"] is False and patched.json()["loaded"] is False

    response = chat(service, personalization={"weights": {"concise": 1.0}})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "unknown_objective" and error["param"] == "personalization.weights.concise"
    assert "helpful" in error["message"]

    reactivated = service.client.patch(
        "/v1/objectives/concise", json={"active": True, "version": "1"}, headers=service.auth()
    )
    assert reactivated.status_code == 200 and reactivated.json()["loaded"] is True
    assert chat(service, max_tokens=2, personalization={"weights": {"concise": 1.0}}).status_code == 200

    missing = service.client.patch(
        "/v1/objectives/concise", json={"active": True, "version": "7"}, headers=service.auth()
    )
    assert missing.status_code == 404


def test_delete_removes_objective_and_artifact(service: Service, tiny_head_dir: Callable[..., Path]) -> None:
    register_head(service, tiny_head_dir("concise", seed=1))
    artifacts = [p for p in service.settings.artifact_root.glob("*/*") if p.is_dir() and p.parent.name != ".staging"]
    assert len(artifacts) == 1
    deleted = service.client.delete("/v1/objectives/concise", headers=service.auth())
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    assert service.client.get("/v1/objectives", headers=service.auth()).json()["data"] == []
    assert not artifacts[0].exists()
    assert service.client.delete("/v1/objectives/concise", headers=service.auth()).status_code == 404


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("value_head.bin", "unsafe_artifact"),
        ("weights.pt", "unsafe_artifact"),
        ("model.pkl", "unsafe_artifact"),
        ("../head.json", "invalid_upload"),
        ("..\\head.json", "invalid_upload"),
        ("/etc/passwd", "invalid_upload"),
        ("notes.txt", "invalid_upload"),
    ],
)
def test_unsafe_or_path_like_files_are_refused(
    service: Service, tiny_head_dir: Callable[..., Path], name: str, code: str
) -> None:
    files = [*head_files(tiny_head_dir("concise")), ("files", (name, b"\x80\x04junk"))]
    response = service.client.post("/v1/objectives", files=files, headers=service.auth())
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["param"] == "files"
    assert service.client.get("/v1/objectives", headers=service.auth()).json()["data"] == []


def test_head_for_another_backbone_is_refused(service: Service, tmp_path: Path) -> None:
    other = build_tiny_base(backbone_id="another-llama")
    directory = save_head(new_head(other, "concise", kind="linear"), tmp_path / "other")
    response = service.client.post("/v1/objectives", files=head_files(directory), headers=service.auth())
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "backbone_mismatch"


def test_malformed_head_json_and_missing_files_are_refused(
    service: Service, tiny_head_dir: Callable[..., Path]
) -> None:
    directory = tiny_head_dir("concise")
    (directory / "head.json").write_text(json.dumps({"objective": "concise"}))
    bad = service.client.post("/v1/objectives", files=head_files(directory), headers=service.auth())
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_head"
    only_json = service.client.post("/v1/objectives", files=[("files", ("head.json", b"{}"))], headers=service.auth())
    assert only_json.status_code == 422 and "safetensors" in only_json.json()["error"]["message"]
    nothing = service.client.post("/v1/objectives", data={"activate": "true"}, headers=service.auth())
    assert nothing.status_code == 422 and nothing.json()["error"]["param"] in ("files", None)


def test_oversize_upload_is_413(start_service: Callable[..., Service], tiny_head_dir: Callable[..., Path]) -> None:
    service = start_service(max_upload_bytes=1024)
    response = service.client.post("/v1/objectives", files=head_files(tiny_head_dir("concise")), headers=service.auth())
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"


def test_head_registered_from_a_folder_is_loaded_on_start(
    backend: Backend, start_service: Callable[..., Service], tiny_head_dir: Callable[..., Path], tmp_path: Path
) -> None:
    """What the CLI and the demo do: register a local head folder straight into the registry."""
    settings = make_settings(backend, tmp_path / "data")
    upgrade(settings.database_url)
    db = Database(settings.database_url)
    try:
        registered = register_head_directory(
            HeadStore(db), tiny_head_dir("concise", seed=1), artifact_root=settings.artifact_root
        )
        again = register_head_directory(
            HeadStore(db), tiny_head_dir("concise", seed=1), artifact_root=settings.artifact_root
        )
    finally:
        db.dispose()
    assert registered.record.active and registered.path.is_dir()
    assert again.record.id == registered.record.id and again.path == registered.path
    service = start_service()
    assert service.client.get("/readyz").json()["heads"] == {"concise": "1"}


def test_admin_actions_are_audited(service: Service, tiny_head_dir: Callable[..., Path]) -> None:
    user_id, key = service.create_user()
    register_head(service, tiny_head_dir("concise", seed=1))
    service.client.patch("/v1/objectives/concise", json={"active": False}, headers=service.auth())
    entries = service.client.get("/v1/audit", headers=service.auth()).json()["data"]
    actions = [(e["action"], e["target"], e["actor_id"]) for e in entries]
    assert ("user.create", user_id, service.admin_id) in actions
    assert ("head.register", "concise@1", service.admin_id) in actions
    assert ("head.deactivate", "concise", service.admin_id) in actions
    assert service.client.get("/v1/audit", headers=service.auth(key)).status_code == 403
