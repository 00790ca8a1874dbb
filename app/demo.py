"""``personalize demo``: the embedded default, prepared once, served with the UI.

    prepare_demo(settings, head_folders)   idempotent set-up: base model cached, database migrated, head
                                           folders registered, a demo user and an admin (keys stored in
                                           DATA_DIR/demo-keys.json and reused by the next run)
    DemoServers(...)                       the API and the UI as child processes: start, wait until ready,
                                           stop (SIGTERM, then SIGKILL after a grace period)
    run_demo(...)                          all of it, until Ctrl-C or SIGTERM

The API runs as ``python -m app.cli serve`` and the UI as ``python -m streamlit run ui/app.py``, each a
child process of this one (their supervisor). It reports progress through a ``say`` callback (the CLI
prints it), never ``print``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

import httpx

from personalize.errors import PersonalizeError
from personalize.settings import Settings

log = logging.getLogger(__name__)

KEYS_FILE = "demo-keys.json"
DEMO_USER = "demo"
DEMO_ADMIN = "demo-admin"
STOP_GRACE_S = 15.0
Say = Callable[[str], None]


class DemoError(PersonalizeError):
    """The demo could not be prepared or started (a port in use, a server that exited or never got ready)."""


@dataclass(frozen=True)
class DemoKeys:
    user_id: str
    user_name: str
    user_key: str
    admin_id: str
    admin_name: str
    admin_key: str


@dataclass(frozen=True)
class DemoSetup:
    keys: DemoKeys | None
    """None when preparing without demo users (``users=False``)."""
    keys_reused: bool
    registered: tuple[str, ...]
    """Heads registered by this run, as ``objective@version``."""
    present: tuple[str, ...]
    """Heads that were already registered (their activation is left as an admin set it)."""
    skipped: Mapping[str, str] = field(default_factory=dict)
    """Head folders that could not be registered, with the reason."""


# ---- preparation ---------------------------------------------------------------------------


def _is_embedded(base_model: str | None) -> bool:
    return base_model in (None, "", "embedded")


def _load_keys(path: Path) -> DemoKeys | None:
    try:
        return DemoKeys(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _save_keys(path: Path, keys: DemoKeys) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # keys: owner-only
    with os.fdopen(fd, "w") as handle:
        json.dump(asdict(keys), handle, indent=2)
    os.replace(tmp, path)


def _ensure_users(database_url: str, path: Path) -> tuple[DemoKeys, bool]:
    """The stored demo keys if they still sign in with the right roles, else fresh users (stored)."""
    import uuid

    from personalize.db import AlreadyExistsError, Database, UserStore

    db = Database(database_url)
    try:
        users = UserStore(db)
        stored = _load_keys(path)
        if stored is not None:
            user, admin = users.authenticate(stored.user_key), users.authenticate(stored.admin_key)
            if user is not None and admin is not None and admin.is_admin:
                return stored, True

        def create(name: str, role: str) -> tuple[str, str, str]:
            try:
                made = users.create(name, role)
            except AlreadyExistsError:  # the name is taken but its key is lost: a fresh name
                made = users.create(f"{name}-{uuid.uuid4().hex[:6]}", role)
            return made.user.id, made.user.name, made.api_key

        admin_id, admin_name, admin_key = create(DEMO_ADMIN, "admin")
        user_id, user_name, user_key = create(DEMO_USER, "user")
    finally:
        db.dispose()
    keys = DemoKeys(user_id, user_name, user_key, admin_id, admin_name, admin_key)
    _save_keys(path, keys)
    return keys, False


def _register_heads(
    settings: Settings, folders: Sequence[Path], admin_id: str | None, backbone_id: str | None
) -> tuple[list[str], list[str], dict[str, str]]:
    """Register head folders not registered yet; a head already there is left alone."""
    from personalize.db import Database, HeadStore, NotFoundError, StoreError
    from personalize.db.artifacts import content_sha256, file_sha256, register_head_directory
    from personalize.heads import load_head

    registered: list[str] = []
    present: list[str] = []
    skipped: dict[str, str] = {}
    db = Database(settings.database_url)
    try:
        heads = HeadStore(db)
        for folder in folders:
            try:
                meta = load_head(folder).meta
                if backbone_id is not None and meta.backbone_id != backbone_id:
                    skipped[str(folder)] = f"trained on {meta.backbone_id!r}, the demo serves {backbone_id!r}"
                    continue
                sha = content_sha256({p.name: file_sha256(p) for p in folder.iterdir() if p.is_file()})
                try:
                    known = {v.version: v.sha256 for v in heads.get(meta.objective).versions}
                except NotFoundError:
                    known = {}
                label = f"{meta.objective}@{meta.version}"
                if known.get(meta.version) == sha:
                    present.append(label)
                    continue
                register_head_directory(
                    heads, folder, artifact_root=settings.artifact_root, created_by=admin_id, activate=True
                )
                registered.append(label)
            except (PersonalizeError, StoreError, OSError) as exc:
                skipped[str(folder)] = str(exc)
    finally:
        db.dispose()
    return registered, present, skipped


def prepare_demo(
    settings: Settings, head_folders: Sequence[Path], say: Say = log.info, *, users: bool = True
) -> DemoSetup:
    """Everything the servers need, done once: a second call finds it all in place and returns quickly.

    ``users=False`` registers the heads but creates no demo user (a production set-up)."""
    from personalize.db.migrate import upgrade
    from personalize.heads import discover_heads

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    backbone_id: str | None = None
    if _is_embedded(settings.base_model):
        from personalize.models import EMBEDDED_BACKBONE_ID, embedded_cache_dir, ensure_embedded_cache

        backbone_id = EMBEDDED_BACKBONE_ID
        if not (embedded_cache_dir(settings.data_dir) / "model.safetensors").is_file():
            say("preparing the embedded base model (first run only, about 20 s)")
        ensure_embedded_cache(settings.data_dir)
    upgrade(settings.database_url)
    keys: DemoKeys | None = None
    reused = False
    if users:
        keys, reused = _ensure_users(settings.database_url, settings.data_dir / KEYS_FILE)
    registered, present, skipped = _register_heads(
        settings, discover_heads(list(head_folders)), keys.admin_id if keys else None, backbone_id
    )
    return DemoSetup(keys, reused, tuple(registered), tuple(present), skipped)


# ---- the servers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoConfig:
    host: str = "127.0.0.1"
    api_port: int = 8000
    ui_port: int = 8501
    ready_timeout_s: float = 600.0
    """How long the API may take to load the model and heads (the first run also builds its cache)."""

    def __post_init__(self) -> None:
        for name in ("api_port", "ui_port"):
            port = getattr(self, name)
            if not 1 <= port <= 65535:
                raise DemoError(f"{name} must be a port number in [1, 65535], got {port}")
        if self.api_port == self.ui_port:
            raise DemoError(f"the API and the UI need different ports, got {self.api_port} for both")

    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host

    @property
    def api_url(self) -> str:
        return f"http://{self._client_host}:{self.api_port}"

    @property
    def ui_url(self) -> str:
        return f"http://{self._client_host}:{self.ui_port}"


def ui_app_path() -> Path:
    """``ui/app.py`` of the installed ``ui`` package (found, not imported: the service never imports the UI)."""
    spec = importlib.util.find_spec("ui")
    if spec is None or not spec.submodule_search_locations:
        raise DemoError("the 'ui' package is not installed: run `bash scripts/setup.sh` (pip install -e .)")
    return Path(next(iter(spec.submodule_search_locations))) / "app.py"


def streamlit_argv(host: str, port: int) -> list[str]:
    """The command that serves the UI on ``host:port`` (headless, no usage stats, no file watcher)."""
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(ui_app_path()),
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
        "--client.toolbarMode",
        "minimal",
    ]


def check_port_free(host: str, port: int, what: str) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise DemoError(
                f"cannot start the {what} on {host}:{port}: the port is in use ({exc.strerror}); "
                f"stop what uses it or pass --{what.lower()}-port"
            ) from exc


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class _Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]


class DemoServers:
    """The API and the UI as child processes, each in its own process group, logging to DATA_DIR/logs/."""

    def __init__(self, settings: Settings, config: DemoConfig, keys: DemoKeys) -> None:
        self.settings = settings
        self.config = config
        self.keys = keys
        self.log_dir = settings.data_dir / "logs"
        self.children: list[_Child] = []

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PERSONALIZE_DATA_DIR"] = str(self.settings.data_dir)
        env.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never wait on a hub
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        if self.settings.base_model:
            env["PERSONALIZE_BASE_MODEL"] = self.settings.base_model
        return env

    def _spawn(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> _Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        log_file = log_path.open("ab")
        process = subprocess.Popen(
            list(argv),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches only this process, which stops the children in order
        )
        child = _Child(name, process, log_path, log_file)
        self.children.append(child)
        return child

    def start(self) -> None:
        cfg = self.config
        check_port_free(cfg.host, cfg.api_port, "API")
        check_port_free(cfg.host, cfg.ui_port, "UI")
        env = self._env()
        api_argv = [sys.executable, "-m", "app.cli", "serve", "--host", cfg.host, "--port", str(cfg.api_port)]
        self._spawn("api", api_argv, env)
        ui_env = {**env, "PERSONALIZE_API_URL": cfg.api_url, "PERSONALIZE_UI_API_KEY": self.keys.user_key}
        ui_argv = streamlit_argv(cfg.host, cfg.ui_port)
        self._spawn("ui", ui_argv, ui_env)

    def exited(self) -> _Child | None:
        return next((c for c in self.children if c.process.poll() is not None), None)

    def check_alive(self) -> None:
        """Raise DemoError, with the end of its log, if a server has exited."""
        child = self.exited()
        if child is not None:
            raise DemoError(
                f"the {child.name} server exited with code {child.process.returncode}; "
                f"the end of {child.log_path}:\n{_tail(child.log_path)}"
            )

    def wait_ready(self, stop: threading.Event) -> bool:
        """Poll /readyz and the UI's health until both answer; False if ``stop`` was set first."""
        deadline = time.monotonic() + self.config.ready_timeout_s
        pending = {
            "API": f"{self.config.api_url}/readyz",
            "UI": f"{self.config.ui_url}/_stcore/health",
        }
        with httpx.Client(timeout=2.0) as http:
            while pending:
                self.check_alive()
                for what, url in list(pending.items()):
                    try:
                        if http.get(url).status_code == 200:
                            del pending[what]
                    except httpx.TransportError:
                        pass
                if time.monotonic() > deadline:
                    raise DemoError(
                        f"the {', '.join(pending)} did not get ready within {self.config.ready_timeout_s:.0f} s; "
                        f"see the logs in {self.log_dir}"
                    )
                if pending and stop.wait(0.25):
                    return False
        return True

    def stop(self) -> None:
        """SIGTERM both (their whole process groups), wait, SIGKILL what is left; close the logs."""
        for child in self.children:
            if child.process.poll() is None:
                _signal_group(child.process, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for child in self.children:
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s: killing it", child.name, STOP_GRACE_S)
                _signal_group(child.process, signal.SIGKILL)
                child.process.wait()
            child.log_file.close()
        self.children.clear()


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGINT (Ctrl-C) or SIGTERM while inside the block; the old handlers come back after."""
    stop = threading.Event()

    def handle(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_demo(
    settings: Settings,
    config: DemoConfig,
    head_folders: Sequence[Path],
    say: Say = log.info,
    *,
    on_setup: Callable[[DemoSetup], None] | None = None,
) -> None:
    """Prepare, start the API and the UI, report their URLs, and serve until Ctrl-C or SIGTERM."""
    with stop_on_signals() as stop:
        setup = prepare_demo(settings, head_folders, say)
        if on_setup is not None:
            on_setup(setup)
        if stop.is_set():
            return
        assert setup.keys is not None  # run_demo prepares with users
        servers = DemoServers(settings, config, setup.keys)
        try:
            say(f"starting the API on {config.api_url} and the UI on {config.ui_url} (logs in {servers.log_dir})")
            servers.start()
            if not servers.wait_ready(stop):
                return
            say(f"API ready: {config.api_url}  (OpenAPI docs: {config.api_url}/docs)")
            say(f"UI ready:  {config.ui_url}  (the demo user's key is filled in: press Sign in)")
            say("press Ctrl-C to stop")
            while not stop.wait(0.5):
                servers.check_alive()
        finally:
            say("stopping the API and the UI")
            servers.stop()
