"""Database sessions: bounded waits on PostgreSQL, WAL mode on SQLite."""

from __future__ import annotations

import pytest

from personalize.db.session import Database, Timeouts
from personalize.errors import ConfigError
from tests.integration.conftest import Backend

pytestmark = pytest.mark.integration


def test_waits_are_bounded_and_sqlite_uses_wal(backend: Backend) -> None:
    db = Database(backend.database_url, Timeouts(connect_s=3, statement_s=7, pool_s=2))
    try:
        with db.engine.connect() as conn:
            if backend.name == "sqlite":
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
                assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 7000
            else:
                assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == "7s"
                assert db.engine.pool.timeout() == 2  # type: ignore[attr-defined]  # a QueuePool
    finally:
        db.dispose()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_timeouts_are_validated(backend: Backend) -> None:
    with pytest.raises(ConfigError, match="statement_s"):
        Timeouts(statement_s=0)
