"""`personalize db ...` and `personalize users create ...` (the Typer sub-apps)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from personalize.db import Database, UserStore, migrate
from personalize.db.cli import db_app, users_app
from tests.integration.conftest import Backend

pytestmark = pytest.mark.integration


def _cli() -> typer.Typer:
    root = typer.Typer()
    root.add_typer(db_app, name="db")
    root.add_typer(users_app, name="users")
    return root


def test_db_upgrade_and_users_create_json(backend: Backend, tmp_path: Path) -> None:
    env = {"PERSONALIZE_DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": backend.database_url}
    runner = CliRunner()
    upgraded = runner.invoke(_cli(), ["db", "upgrade"], env=env)
    assert upgraded.exit_code == 0, upgraded.output
    assert str(migrate.head_revision()) in upgraded.output
    assert "up to date" in runner.invoke(_cli(), ["db", "current"], env=env).output

    created = runner.invoke(_cli(), ["users", "create", "root", "--admin", "--json"], env=env)
    assert created.exit_code == 0, created.output
    payload = json.loads(created.output)
    assert {"id", "api_key"} <= set(payload) and payload["role"] == "admin"
    db = Database(backend.database_url)
    try:
        user = UserStore(db).authenticate(payload["api_key"])
    finally:
        db.dispose()
    assert user is not None and user.id == payload["id"] and user.is_admin

    again = runner.invoke(_cli(), ["users", "create", "root"], env=env)
    assert again.exit_code == 1 and "already exists" in again.output
