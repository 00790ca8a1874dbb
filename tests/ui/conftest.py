"""UI fixtures: the real API (tiny random model, SQLite, two heads) served over HTTP on a free port,
with every request body recorded, and AppTest drivers for the Streamlit app."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient
from streamlit.testing.v1 import AppTest

from app.main import create_app
from personalize.rewards import BUILTIN_REWARDS, register_reward
from personalize.settings import Settings
from tests.integration.conftest import brevity, create_admin, free_port, tiny_engine_factory, wait_until
from tests.integration.helpers import head_files

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "ui" / "app.py"
APP_TIMEOUT_S = 60.0

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Message], Any]


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    body: Any


@dataclass
class Recorder:
    """ASGI middleware keeping the JSON body of every request (what the UI really sent)."""

    app: Any
    requests: list[Recorded] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        buffered: list[Message] = []
        while True:
            message = await receive()
            buffered.append(message)
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        raw = b"".join(m.get("body", b"") for m in buffered)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        self.requests.append(Recorded(scope["method"], scope["path"], body))

        async def replay() -> Message:
            return buffered.pop(0) if buffered else await receive()

        await self.app(scope, replay, send)

    def posted(self, path: str) -> list[Any]:
        return [r.body for r in self.requests if r.method in ("POST", "PUT", "PATCH") and r.path == path]


@dataclass
class LiveApi:
    url: str
    client: TestClient
    recorder: Recorder
    admin_key: str
    user_id: str
    user_key: str

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.admin_key}"}


def letters_shared(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """The share of the prompt's letters that the response uses too, in [0, 1]."""
    shared = []
    for prompt, response in zip(prompts, responses, strict=True):
        wanted = {c for c in prompt.lower() if c.isalpha()}
        shared.append(len(wanted & set(response.lower())) / max(len(wanted), 1))
    return shared


STAND_INS = {"concise": (brevity, (0.0, 1.0)), "helpful": (letters_shared, (0.0, 1.0))}


@pytest.fixture
def stand_in_rewards() -> Iterator[None]:
    """The test heads name no reward, so the built-in rewards of their objectives' names score answers
    (and rank Best-of-N / AISP samples); for the test, cheap exact stand-ins replace them (the built-in
    ones load an embedding model). The API runs in this process, so it sees them."""
    for name, (scorer, bounds) in STAND_INS.items():
        register_reward(name, scorer, value_range=bounds, replace=True)
    yield
    for name in STAND_INS:
        register_reward(name, BUILTIN_REWARDS[name], replace=True)


@pytest.fixture
def api(tmp_path: Path, tiny_head_dir: Callable[..., Path], stand_in_rewards: None) -> Iterator[LiveApi]:
    """The service with heads 'concise' (LoRA) and 'helpful' (linear), an admin and a user; stand-in
    rewards for both."""
    data = tmp_path / "data"
    settings = Settings(
        data_dir=data,
        database_url=f"sqlite:///{data / 'personalize.db'}",
        redis_url=None,
        auto_migrate=True,
        head_sync_interval_s=3600.0,
    )
    app = create_app(settings, engine_factory=tiny_engine_factory)
    recorder = Recorder(app)
    with TestClient(app, raise_server_exceptions=False) as client:
        _, admin_key = create_admin(settings.database_url)
        wait_until(lambda: client.get("/readyz").status_code == 200, what="/readyz")
        auth = {"Authorization": f"Bearer {admin_key}"}
        for folder in (tiny_head_dir("concise", seed=1), tiny_head_dir("helpful", kind="linear", seed=2)):
            response = client.post("/v1/objectives", files=head_files(folder), headers=auth)
            assert response.status_code == 201, response.text
        created = client.post("/v1/users", json={"name": f"u-{uuid.uuid4().hex[:6]}"}, headers=auth).json()
        port = free_port()
        config = uvicorn.Config(recorder, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        wait_until(lambda: server.started, what="uvicorn to start")
        try:
            yield LiveApi(f"http://127.0.0.1:{port}", client, recorder, admin_key, created["id"], created["api_key"])
        finally:
            server.should_exit = True
            thread.join(15)


@pytest.fixture
def ui_env(monkeypatch: pytest.MonkeyPatch, api: LiveApi, tmp_path: Path) -> LiveApi:
    """The UI's settings pointing at the live API (no key pre-filled, no evaluation plot)."""
    monkeypatch.setenv("PERSONALIZE_API_URL", api.url)
    monkeypatch.delenv("PERSONALIZE_UI_API_KEY", raising=False)
    monkeypatch.setenv("PERSONALIZE_EVAL_PLOT", str(tmp_path / "no-eval.png"))
    return api


def new_app() -> AppTest:
    return AppTest.from_file(str(APP), default_timeout=APP_TIMEOUT_S)


def sign_in(at: AppTest, key: str) -> AppTest:
    at.run()
    at.sidebar.text_input(key="api_key_input").input(key)
    at.sidebar.button(key="sign_in").click()
    return at.run()


def texts(at: AppTest) -> str:
    """Everything a person reads on the page (markdown, captions, alerts, headers), as one string."""
    parts: list[str] = []
    for kind in ("markdown", "caption", "error", "warning", "info", "success", "title", "subheader"):
        parts.extend(str(e.value) for e in getattr(at, kind))
    return "\n".join(parts)


class DemoProcess:
    """``python -m app.cli demo`` with its output read line by line on a thread."""

    def __init__(self, env: dict[str, str], heads: Path | list[Path], api_port: int, ui_port: int) -> None:
        argv = [sys.executable, "-m", "app.cli", "demo"]
        for folder in heads if isinstance(heads, list) else [heads]:
            argv += ["--heads", str(folder)]
        argv += ["--api-port", str(api_port), "--ui-port", str(ui_port)]
        self.process = subprocess.Popen(
            argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, text: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            self.seen.append(line)
            if text in line:
                return line
        self.process.kill()
        raise AssertionError(f"no {text!r} within {timeout_s} s; output:\n" + "\n".join(self.seen))

    def stop(self, sig: signal.Signals) -> int:
        self.process.send_signal(sig)
        code = self.process.wait(60)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return code
