"""Alembic migrations up and down, `alembic check`, and concurrent upgrades from several replicas."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect

from personalize.db import migrate
from personalize.db.session import create_db_engine
from tests.integration.conftest import _pg_available, _pg_execute, _pg_url

pytestmark = pytest.mark.integration

TABLES = {"objectives", "head_versions", "users", "profiles", "audit_log"}


@pytest.fixture(params=["postgres", "sqlite"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    if not _pg_available():
        pytest.skip("PostgreSQL is not reachable")
    name = f"pz_mig_{uuid.uuid4().hex[:10]}"
    _pg_execute(f'CREATE DATABASE "{name}"')
    try:
        yield _pg_url(name)
    finally:
        _pg_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _tables(url: str) -> set[str]:
    engine = create_db_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_check_downgrade_upgrade(empty_database: str) -> None:
    assert migrate.current_revision(empty_database) is None
    migrate.upgrade(empty_database)
    assert _tables(empty_database) == TABLES
    assert migrate.is_up_to_date(empty_database)

    config = migrate.alembic_config(empty_database)
    command.check(config)  # the models and the migrations describe the same schema

    migrate.downgrade(empty_database, "base")
    assert _tables(empty_database) == set()
    assert migrate.current_revision(empty_database) is None
    migrate.upgrade(empty_database)
    assert _tables(empty_database) == TABLES


def test_replicas_upgrading_at_once_all_succeed(empty_database: str) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            migrate.upgrade(empty_database)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert migrate.current_revision(empty_database) == migrate.head_revision()
    assert _tables(empty_database) == TABLES
