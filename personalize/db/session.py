"""Engines and sessions: one :class:`Database` per process and URL.

Every wait on the database is bounded, so an outage turns into a quick error
instead of requests piling up on a dead server:

- connecting: ``connect_timeout_s`` (PostgreSQL ``connect_timeout``);
- a statement: ``statement_timeout_s`` (PostgreSQL ``statement_timeout``; SQLite's
  ``busy_timeout`` for a locked file);
- a pooled connection: ``pool_timeout_s`` when all are in use.

Pooled connections are pinged before use, so after a database restart the pool
reconnects on its own. SQLite runs in WAL mode (readers do not block the writer).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from personalize.errors import ConfigError


def normalize_url(url: str) -> str:
    """Use psycopg 3 for plain ``postgresql://`` URLs (SQLAlchemy would pick psycopg2)."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


@dataclass(frozen=True)
class Timeouts:
    """How long any one wait on the database may take (seconds)."""

    connect_s: float = 5.0
    statement_s: float = 10.0
    pool_s: float = 5.0

    def __post_init__(self) -> None:
        for name in ("connect_s", "statement_s", "pool_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 < value <= 3600:
                raise ConfigError(f"database timeout {name} must be in (0, 3600] seconds, got {value!r}")


def _sqlite_pragmas(busy_ms: int, wal: bool) -> Callable[[Any, Any], None]:
    def apply(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        if wal:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()

    return apply


def create_db_engine(url: str, timeouts: Timeouts | None = None) -> Engine:
    timeouts = timeouts or Timeouts()
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        on_disk = bool(parsed.database and parsed.database != ":memory:")
        if on_disk:
            Path(str(parsed.database)).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas(int(timeouts.statement_s * 1000), wal=on_disk))
        return engine
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "postgresql":
        connect_args = {
            "connect_timeout": max(1, round(timeouts.connect_s)),
            "options": f"-c statement_timeout={int(timeouts.statement_s * 1000)}",
        }
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=10,
        pool_timeout=timeouts.pool_s,
        connect_args=connect_args,
    )


class Database:
    """An engine and its session factory."""

    def __init__(self, url: str, timeouts: Timeouts | None = None) -> None:
        self.url = normalize_url(url)
        self.engine = create_db_engine(self.url, timeouts)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in a transaction: committed on success, rolled back on error."""
        with self._sessions.begin() as session:
            yield session

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    def dispose(self) -> None:
        self.engine.dispose()
