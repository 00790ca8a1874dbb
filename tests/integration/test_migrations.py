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

TABLES = {"objectives", "head_versions", "users", "api_keys", "profiles", "audit_log", "feedback"}


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


def test_keys_survive_the_api_keys_migration_both_ways(empty_database: str) -> None:
    """A user created before keys had their own table keeps their key across upgrade and downgrade."""
    from sqlalchemy import text

    from personalize.db import Database, UserStore
    from personalize.db.keys import hash_api_key

    migrate.upgrade(empty_database, "0001")
    engine = create_db_engine(empty_database)
    key = "pz-old-key-from-before"
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO users (id, name, role, api_key_sha256, key_prefix, created_at) "
                    "VALUES ('u1', 'old', 'user', :h, 'pz-old-k', CURRENT_TIMESTAMP)"
                ),
                {"h": hash_api_key(key)},
            )
            conn.execute(
                text(
                    "INSERT INTO profiles (user_id, weights, beta, method, top_k, version, updated_at) "
                    "VALUES ('u1', '{}', 2.0, 'vas', 20, 3, CURRENT_TIMESTAMP)"
                )
            )
        migrate.upgrade(empty_database)
        db = Database(empty_database)
        try:
            user = UserStore(db).authenticate(key)
            assert user is not None and user.id == "u1"
            issued = UserStore(db).keys.rotate("old", actor_id=None)
        finally:
            db.dispose()
        migrate.downgrade(empty_database, "0001")
        with engine.connect() as conn:
            digest = conn.execute(text("SELECT api_key_sha256 FROM users WHERE id = 'u1'")).scalar_one()
        assert digest == hash_api_key(issued.api_key)  # the newest working key is the one kept
        with engine.connect() as conn:  # re-creating the users table (SQLite) must not cascade into profiles
            assert conn.execute(text("SELECT version FROM profiles WHERE user_id = 'u1'")).scalar_one() == 3
    finally:
        engine.dispose()


def test_existing_profiles_become_manual_with_their_weights_as_anchor(empty_database: str) -> None:
    """The feedback migration: a profile saved before it keeps its weights, now also its anchor."""
    from sqlalchemy import text

    from personalize.db import Database, ProfileStore

    migrate.upgrade(empty_database, "0003_api_keys")
    engine = create_db_engine(empty_database)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO users (id, name, role, key_prefix, created_at) "
                    "VALUES ('u1', 'old', 'user', 'pz-old-k', CURRENT_TIMESTAMP)"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO profiles (user_id, weights, beta, method, top_k, version, updated_at) "
                    "VALUES ('u1', '{\"concise\": 0.5}', 2.0, 'vas', 20, 3, CURRENT_TIMESTAMP)"
                )
            )
        migrate.upgrade(empty_database)
        db = Database(empty_database)
        try:
            profile = ProfileStore(db).get("u1")
        finally:
            db.dispose()
        assert profile.source == "manual" and dict(profile.anchor) == {"concise": 0.5} == dict(profile.weights)
        migrate.downgrade(empty_database, "0003_api_keys")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version FROM profiles WHERE user_id = 'u1'")).scalar_one() == 3
    finally:
        engine.dispose()
