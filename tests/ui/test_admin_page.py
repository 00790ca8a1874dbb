"""The Admin page against the live API: heads and versions, (de)activation, uploads, errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.ui.conftest import LiveApi, new_app, sign_in, texts

pytestmark = pytest.mark.integration


def _admin_page(api: LiveApi, key: str | None = None) -> AppTest:
    at = sign_in(new_app(), key or api.admin_key)
    at.switch_page("views/admin.py")
    return at.run()


def _objective(api: LiveApi, name: str) -> dict[str, object]:
    response = api.client.get(f"/v1/objectives/{name}", headers=api.auth())
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def test_non_admins_are_told_they_need_an_admin_key(ui_env: LiveApi) -> None:
    at = _admin_page(ui_env, ui_env.user_key)
    assert "is not an admin" in texts(at) and "activate" not in {b.key for b in at.button}


def test_lists_heads_and_versions(ui_env: LiveApi) -> None:
    at = _admin_page(ui_env)
    assert not at.exception
    table = at.dataframe[0].value
    assert sorted(table["objective"]) == ["concise", "helpful"]
    assert list(table["version"]) == ["1", "1"] and all(table["active"])


def test_deactivate_then_activate(ui_env: LiveApi) -> None:
    at = _admin_page(ui_env)
    at.selectbox(key="admin_objective").set_value("helpful")
    at.run()
    at.button(key="deactivate").click()
    at.run()
    assert _objective(ui_env, "helpful")["active"] is False
    assert "helpful is deactivated" in texts(at)
    at.button(key="activate").click()
    at.run()
    assert _objective(ui_env, "helpful")["version"] == "1"
    assert "helpful: version 1 is active" in texts(at)


def test_upload_a_head_then_activate_an_older_version(ui_env: LiveApi, tiny_head_dir: Callable[..., Path]) -> None:
    at = _admin_page(ui_env)
    folder = tiny_head_dir("concise", seed=5, version="2")
    at.file_uploader[0].set_value(
        [(p.name, p.read_bytes(), "application/octet-stream") for p in sorted(folder.iterdir())]
    )
    at.button(key="upload").click()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert "Registered concise; active version: 2" in texts(at)
    assert _objective(ui_env, "concise")["version"] == "2"
    at.selectbox(key="admin_objective").set_value("concise")
    at.run()
    at.selectbox(key="admin_version").set_value("1")
    at.run()
    at.button(key="activate").click()
    at.run()
    assert _objective(ui_env, "concise")["version"] == "1"


def test_a_bad_upload_shows_the_services_reason(ui_env: LiveApi) -> None:
    at = _admin_page(ui_env)
    at.file_uploader[0].set_value([("head.json", b"{not json", "application/json")])
    at.button(key="upload").click()
    at.run()
    errors = " ".join(e.value for e in at.error)
    assert errors.startswith("Upload refused:") and "HTTP 4" in errors
