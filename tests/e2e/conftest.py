"""The real embedded base model (SmolLM2-135M), cached once per checkout in .data/."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from personalize.models import BaseModel, load_base_model

VENV_BIN = Path(sys.executable).parent
DATA_DIR = Path(os.environ.get("PERSONALIZE_TEST_DATA_DIR", Path(__file__).resolve().parents[2] / ".data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    return DATA_DIR


@pytest.fixture(scope="session")
def real_base(data_dir: Path) -> BaseModel:
    return load_base_model(None, data_dir=data_dir, device="cpu")


UNSET = ("DATABASE_URL", "REDIS_URL", "PERSONALIZE_BASE_MODEL", "PERSONALIZE_API_KEY")
"""Settings a user's shell would not have set."""


@dataclass(frozen=True)
class Served:
    """``personalize serve`` on the real model as a process, with the shipped heads registered."""

    url: str
    data_dir: Path
    env: dict[str, str]
    """The environment the service runs with (its data directory and database): CLI commands given it
    act on the same database."""
    user_key: str
    admin_key: str


def user_env(data: Path) -> dict[str, str]:
    """The environment a user's shell would have: the checkout's venv first on PATH, a data directory
    that reuses the e2e model cache, no outside database or Redis."""
    env = {**os.environ, "PERSONALIZE_DATA_DIR": str(data), "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    for name in UNSET:
        env.pop(name, None)
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", COLUMNS="200")
    return env


@pytest.fixture(scope="session")
def served(data_dir: Path, real_base: BaseModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from app.demo import prepare_demo
    from personalize.heads import SHIPPED_HEADS_DIR
    from personalize.settings import Settings
    from tests.integration.conftest import free_port, wait_until

    data = tmp_path_factory.mktemp("served") / "data"
    data.mkdir()
    (data / "models").symlink_to(data_dir / "models")  # the base model cache the e2e suite already built
    setup = prepare_demo(Settings(data_dir=data, redis_url=None, database_url=""), [SHIPPED_HEADS_DIR])
    env = user_env(data)
    port = free_port()
    argv = [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--log-level", "warning"]
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the service exited: {process.stderr.read() if process.stderr else ''}")
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(ready, timeout_s=300, what="the service to get ready")
        yield Served(url, data, env, setup.keys.user_key, setup.keys.admin_key)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
