"""The service's commands: ``personalize serve``, ``personalize ui`` and ``personalize demo``.

Graceful shutdown of ``serve``: on SIGTERM (or Ctrl-C) the server stops listening, the app stops
admitting completions (503 with ``Retry-After``; /readyz turns 503), and requests already in flight,
streams included, get up to ``shutdown_timeout_s`` (PERSONALIZE_SHUTDOWN_TIMEOUT_S, default 30 s)
to finish; then what is left is cancelled and the process exits.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
import uvicorn
from fastapi import FastAPI

from app.demo import DemoConfig, DemoSetup, prepare_demo, run_demo, streamlit_argv
from personalize.commands.options import (
    BaseModelOpt,
    HeadsOpt,
    RemoteModelOpt,
    RemoteUrlOpt,
    console,
    err,
    fail,
    settings,
)
from personalize.errors import PersonalizeError
from personalize.settings import Settings


class DrainingServer(uvicorn.Server):
    """uvicorn's server that also tells the app to stop admitting work when asked to exit."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.on_exit()
        super().handle_exit(sig, frame)


def drain(app: FastAPI) -> None:
    """Stop admitting completions (the lifespan may not have started yet)."""
    services = getattr(app.state, "services", None)
    if services is not None:
        services.begin_drain()


def draining_server(app: FastAPI, settings: Settings, *, host: str, port: int, log_level: str) -> DrainingServer:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=int(settings.shutdown_timeout_s) if settings.shutdown_timeout_s > 0 else None,
    )
    return DrainingServer(config, on_exit=lambda: drain(app))


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default: PERSONALIZE_HOST or 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: PERSONALIZE_PORT or 8000).")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    remote_url: RemoteUrlOpt = None,
    remote_model: RemoteModelOpt = None,
) -> None:
    """Serve the OpenAI-compatible API (one process: one model, one batching decoder; with --remote-url the
    model runs on that upstream server and this process steers it)."""
    for name, value in (("PERSONALIZE_REMOTE_URL", remote_url), ("PERSONALIZE_REMOTE_MODEL", remote_model)):
        if value:
            os.environ[name] = value  # the app factory reads the settings from the environment
    from app.main import create_app_from_env

    config = settings()
    app = create_app_from_env()
    server = draining_server(app, config, host=host or config.host, port=port or config.port, log_level=log_level)
    server.run()


def ui(
    api_url: Annotated[str, typer.Option("--api-url", help="The service the UI talks to.")] = "http://127.0.0.1:8000",
    host: Annotated[str, typer.Option(help="Bind address of the UI.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the UI.")] = 8501,
) -> None:
    """Serve the Streamlit UI (it talks to the API over HTTP only)."""
    env = {**os.environ, "PERSONALIZE_API_URL": api_url}
    raise typer.Exit(subprocess.call(streamlit_argv(host, port), env=env))


def _report(setup: DemoSetup, data_dir: Path, database_url: str) -> None:
    """What the preparation did, and the demo users' keys."""
    keys = setup.keys
    console.print(f"database ready: {database_url}")
    for label, names in (("registered", setup.registered), ("already registered", setup.present)):
        if names:
            console.print(f"heads {label}: {', '.join(names)}")
    if not setup.registered and not setup.present:
        console.print("[yellow]no heads found: the UI works without sliders until an admin uploads one[/yellow]")
    for folder, reason in setup.skipped.items():
        err.print(f"[yellow]skipped head {folder}: {reason}[/yellow]")
    if keys is None:
        console.print("no demo users created: make users with `personalize users create NAME [--admin]`")
        return
    origin = "stored keys reused" if setup.keys_reused else "created (keys stored for the next run)"
    console.print(f"demo users {origin} in {data_dir / 'demo-keys.json'}:")
    console.print(f"  user  [bold]{keys.user_name}[/bold]  API key: [bold]{keys.user_key}[/bold]", soft_wrap=True)
    console.print(f"  admin [bold]{keys.admin_name}[/bold]  API key: [bold]{keys.admin_key}[/bold]", soft_wrap=True)


def demo(
    base_model: BaseModelOpt = None,
    heads: HeadsOpt = None,
    host: Annotated[str, typer.Option(help="Bind address of the API and the UI.")] = "127.0.0.1",
    api_port: Annotated[int, typer.Option("--api-port", help="Port of the API.")] = 8000,
    ui_port: Annotated[int, typer.Option("--ui-port", help="Port of the UI.")] = 8501,
    prepare_only: Annotated[
        bool, typer.Option("--prepare-only", help="Set everything up and print the keys; start no server.")
    ] = False,
    users: Annotated[
        bool, typer.Option("--users/--no-users", help="Create the demo users (--no-users: heads only, no keys).")
    ] = True,
) -> None:
    """Prepare the embedded default (model cache, database, heads, demo users), then serve the API and the UI
    until Ctrl-C."""
    from personalize.heads import SHIPPED_HEADS_DIR

    config = settings()
    if base_model:
        config = config.model_copy(update={"base_model": base_model})
    folders = list(heads) if heads else [SHIPPED_HEADS_DIR, config.data_dir / "heads"]
    console.print(f"data directory: {config.data_dir}")

    def say(message: str) -> None:
        console.print(message, soft_wrap=True)

    def report(setup: DemoSetup) -> None:
        _report(setup, config.data_dir, config.database_url)

    try:
        if prepare_only:
            report(prepare_demo(config, folders, say, users=users))
            return
        if not users:
            raise typer.BadParameter("--no-users goes with --prepare-only (the demo servers need the demo users)")
        run_demo(config, DemoConfig(host=host, api_port=api_port, ui_port=ui_port), folders, say, on_setup=report)
    except PersonalizeError as exc:
        raise fail(exc) from exc
