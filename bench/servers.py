"""The servers the benchmarks start: ``personalize serve`` on a prepared data directory, and vLLM's CPU
build in its own virtual environment (scripts/vllm.sh). Each runs as a child process group until stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from personalize.models import embedded_cache_dir

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = (  # the benchmarks' fixed prompts
    "How do I clean my keyboard without damaging it?",
    "Give me three tips for sleeping better.",
    "What should I pack for a weekend hike?",
    "Explain what a value function is.",
    "Write a short note thanking a colleague.",
    "Why is the sky blue?",
    "How can I save money on groceries?",
    "Describe a good morning routine.",
)


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    key: str = ""

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


def _wait(server: Server, path: str, timeout_s: float) -> Server:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"the server exited; see {server.log}")
        try:
            if httpx.get(f"{server.url}{path}", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(1)
    server.stop()
    raise RuntimeError(f"the server did not answer {path} within {timeout_s:.0f} s; see {server.log}")


def start_personalize(data_dir: Path, port: int, env: Mapping[str, str] | None = None) -> Server:
    """``personalize demo --prepare-only`` on ``data_dir`` (the embedded model, SQLite, the shipped heads,
    demo users), then ``personalize serve`` on it; ``key`` is the demo admin's API key."""
    exe = Path(sys.executable).parent / "personalize"
    full = {**os.environ, "PERSONALIZE_DATA_DIR": str(data_dir), "PERSONALIZE_PORT": str(port), **(env or {})}
    for name in ("DATABASE_URL", "REDIS_URL"):
        full.pop(name, None)
    data_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(exe), "demo", "--prepare-only"], env=full, check=True, capture_output=True)
    key = json.loads((data_dir / "demo-keys.json").read_text())["admin_key"]
    log = data_dir / "bench-server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(exe), "serve"], env=full, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(f"http://127.0.0.1:{port}", process, log, key)
    return _wait(server, "/readyz", 300)


def start_vllm(data_dir: Path, model: str, port: int) -> Server:
    """vLLM's CPU build serving the cached embedded model as ``model`` (installed on first use)."""
    subprocess.run(["bash", "scripts/vllm.sh", "setup"], cwd=ROOT, check=True)
    log = data_dir / f"vllm-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["bash", "scripts/vllm.sh", "serve", str(embedded_cache_dir(data_dir)), model, str(port)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return _wait(Server(f"http://127.0.0.1:{port}", process, log), "/v1/models", 900)


def create_user(url: str, admin_key: str, name: str) -> str:
    """A new user through the admin API; its API key."""
    response = httpx.post(
        f"{url}/v1/users", json={"name": name}, headers={"Authorization": f"Bearer {admin_key}"}, timeout=30
    )
    response.raise_for_status()
    return str(response.json()["api_key"])
