"""Integration fixtures: the real PostgreSQL + Redis of this machine, and SQLite without Redis.

Each test gets its own database (a copy of a migrated template on PostgreSQL, a
fresh file on SQLite) and its own Redis key prefix, so tests never see each
other's data and never touch what other suites keep in the shared services.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.main import create_app
from app.services import EngineFactory, ModelBundle
from personalize.db import Database, UserStore
from personalize.db.migrate import upgrade
from personalize.decoding.engine import Engine
from personalize.rewards import register_reward, unregister_reward
from personalize.settings import Settings
from tests.tiny import build_tiny_base

PG_ADMIN_URL = os.environ.get("PERSONALIZE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_TEST_URL = os.environ.get("PERSONALIZE_TEST_REDIS", "redis://127.0.0.1:6379/0")
BACKENDS = ("postgres", "sqlite")


def wait_until(predicate: Callable[[], Any], *, timeout_s: float = 30.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy, or fail after the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        threading.Event().wait(0.02)


def _pg_execute(sql: str) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


def _pg_url(database: str) -> str:
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{database}"


def _pg_available() -> bool:
    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


def _redis_available() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS_TEST_URL, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A migrated PostgreSQL database used as the template of every test's database."""
    if not _pg_available():
        pytest.skip(f"PostgreSQL is not reachable at {PG_ADMIN_URL}")
    name = f"pz_tpl_{uuid.uuid4().hex[:10]}"
    _pg_execute(f'CREATE DATABASE "{name}"')
    try:
        upgrade(_pg_url(name))
        yield name
    finally:
        _pg_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass(frozen=True)
class Backend:
    name: str
    database_url: str
    redis_url: str | None
    redis_prefix: str


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Either PostgreSQL + Redis (a private database and key prefix) or SQLite without Redis."""
    prefix = f"pztest-{uuid.uuid4().hex[:10]}"
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'data' / 'personalize.db'}"
        yield Backend("sqlite", url, None, prefix)
        return
    template = request.getfixturevalue("pg_template")
    if not _redis_available():
        pytest.skip(f"Redis is not reachable at {REDIS_TEST_URL}")
    name = f"pz_it_{uuid.uuid4().hex[:10]}"
    _pg_execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield Backend("postgres", _pg_url(name), REDIS_TEST_URL, prefix)
    finally:
        _pg_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        client = redis.Redis.from_url(REDIS_TEST_URL)
        keys = list(client.scan_iter(f"{prefix}:*"))
        if keys:
            client.delete(*keys)


def tiny_engine_factory(_settings: Settings) -> ModelBundle:
    """A fresh tiny model per app (loading heads wraps the model's layers in place)."""
    base = build_tiny_base()
    return ModelBundle(base, Engine(base))


def make_settings(backend: Backend, data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "database_url": backend.database_url,
        "redis_url": backend.redis_url,
        "redis_prefix": backend.redis_prefix,
        "auto_migrate": True,
        "head_sync_interval_s": 3600.0,
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Service:
    """A running app (in-process, through TestClient) and an admin key for it."""

    app: FastAPI
    client: TestClient
    settings: Settings
    admin_id: str
    admin_key: str

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.admin_key}"}

    def create_user(self, name: str | None = None, role: str = "user") -> tuple[str, str]:
        response = self.client.post(
            "/v1/users", json={"name": name or f"u-{uuid.uuid4().hex[:8]}", "role": role}, headers=self.auth()
        )
        assert response.status_code == 201, response.text
        body = response.json()
        return body["id"], body["api_key"]


def create_admin(database_url: str) -> tuple[str, str]:
    db = Database(database_url)
    try:
        created = UserStore(db).create(f"admin-{uuid.uuid4().hex[:8]}", "admin")
    finally:
        db.dispose()
    return created.user.id, created.api_key


@pytest.fixture
def start_service(backend: Backend, tmp_path: Path) -> Iterator[Callable[..., Service]]:
    """Factory: start an app on the test's backend (several share the database and Redis)."""
    stack: list[TestClient] = []
    shared_data = tmp_path / "data"

    def start(
        *, engine_factory: EngineFactory | None = tiny_engine_factory, wait_ready: bool = True, **overrides: Any
    ) -> Service:
        settings = make_settings(backend, overrides.pop("data_dir", shared_data), **overrides)
        app = create_app(settings, engine_factory=engine_factory)
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        stack.append(client)
        admin_id, admin_key = create_admin(settings.database_url)
        if wait_ready and engine_factory is not None:
            wait_until(lambda: client.get("/readyz").status_code == 200, what="/readyz")
        return Service(app, client, settings, admin_id, admin_key)

    yield start
    for client in reversed(stack):
        client.__exit__(None, None, None)


@pytest.fixture
def service(start_service: Callable[..., Service]) -> Service:
    return start_service()


def brevity(_prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    return [1.0 / (1.0 + len(r.split())) for r in responses]


def exclaims(_prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    return [float(r.count("!")) for r in responses]


@pytest.fixture
def cheap_rewards() -> Iterator[None]:
    """Rewards 'brevity' in (0, 1] and 'exclaims' in [0, inf), registered for one test: cheap and exact,
    unlike the built-in ones, which load an embedding model."""
    register_reward("brevity", brevity, value_range=(0.0, 1.0), replace=True)
    register_reward("exclaims", exclaims, value_range=(0.0, math.inf), replace=True)
    yield
    unregister_reward("brevity")
    unregister_reward("exclaims")


@pytest.fixture
def rewarded(service: Service, tiny_head_dir: Callable[..., Path], cheap_rewards: None) -> Service:
    """Heads 'brevity' (LoRA; reward 'brevity') and 'shouty' (linear; its head.json names reward 'exclaims')."""
    for folder in (
        tiny_head_dir("brevity", seed=1, reward="brevity"),
        tiny_head_dir("shouty", kind="linear", seed=2, reward="exclaims"),
    ):
        files = [("files", (p.name, p.read_bytes())) for p in sorted(folder.iterdir()) if p.is_file()]
        response = service.client.post("/v1/objectives", files=files, headers=service.auth())
        assert response.status_code == 201, response.text
    return service


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    """uvicorn serving an app on a free local port, in a thread of this process.

    The app is already started (by its TestClient), so uvicorn skips the lifespan
    and both serve the same services: one scheduler, one engine."""

    def __init__(self, app: FastAPI) -> None:
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        wait_until(lambda: self.server.started, what="uvicorn to start")
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)


class RedisProcess:
    """A private redis-server on a free port, started and stopped by the test."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.binary = binary
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_until(up, timeout_s=10, what="redis-server to start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def redis_process() -> Iterator[RedisProcess]:
    proc = RedisProcess()
    proc.start()
    yield proc
    proc.stop()
