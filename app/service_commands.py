"""The service's commands: ``personalize serve``, ``personalize ui`` and ``personalize demo``."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Annotated

import typer
import uvicorn

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
    config = settings()
    uvicorn.run(
        "app.main:create_app_from_env",
        factory=True,
        host=host or config.host,
        port=port or config.port,
        log_level=log_level,
    )


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
            report(prepare_demo(config, folders, say))
            return
        run_demo(config, DemoConfig(host=host, api_port=api_port, ui_port=ui_port), folders, say, on_setup=report)
    except PersonalizeError as exc:
        raise fail(exc) from exc
