"""Schema migrations (Alembic), safe when several replicas start at once.

On PostgreSQL the upgrade runs under a session-level advisory lock, so a second
replica waits for the first and then finds the schema already at head. On SQLite
an exclusive file lock next to the database file does the same.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url

from personalize.db.session import Timeouts, create_db_engine, normalize_url

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
ADVISORY_LOCK_KEY = 0x7065_7273_6F6E  # "person": any constant shared by all replicas
MIGRATION_TIMEOUTS = Timeouts(statement_s=1800.0)
"""Waiting for another replica's migration (the lock) and the migration itself may take long."""


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return config


@contextmanager
def _sqlite_file_lock(url: str) -> Iterator[None]:
    database = make_url(url).database
    if not database or database == ":memory:":
        yield
        return
    lock_path = Path(database).with_suffix(".migrate.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _locked_connection(url: str) -> Iterator[Connection]:
    """A connection held under the migration lock for its whole life."""
    engine = create_db_engine(url, MIGRATION_TIMEOUTS)
    try:
        if engine.dialect.name == "postgresql":
            with engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
                conn.commit()
                try:
                    yield conn
                finally:
                    conn.rollback()
                    conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_LOCK_KEY})
                    conn.commit()
        else:
            with _sqlite_file_lock(engine.url.render_as_string()), engine.connect() as conn:
                # A batch migration re-creates a table (copy, drop, rename): with foreign keys on, the
                # drop would cascade into the rows that reference it. Checked again afterwards.
                conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
                yield conn
                problems = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
                if problems:
                    raise RuntimeError(f"the migration left rows with dangling foreign keys: {problems[:5]}")
    finally:
        engine.dispose()


def _run(url: str, action: str, revision: str) -> None:
    config = alembic_config(url)
    with _locked_connection(url) as conn:
        config.attributes["connection"] = conn
        if action == "upgrade":
            command.upgrade(config, revision)
        else:
            command.downgrade(config, revision)
        conn.commit()


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (default: the newest)."""
    log.info("upgrading database schema to %s", revision)
    _run(url, "upgrade", revision)


def downgrade(url: str, revision: str) -> None:
    """Take the schema back to ``revision`` (``base`` drops every table)."""
    log.info("downgrading database schema to %s", revision)
    _run(url, "downgrade", revision)


def current_revision(url: str) -> str | None:
    engine = create_db_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def is_up_to_date(url: str) -> bool:
    return current_revision(url) == head_revision()
