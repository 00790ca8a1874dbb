"""``personalize serve``: run the HTTP service under uvicorn (settings from the environment).

Graceful shutdown: on SIGTERM (or Ctrl-C) the server stops listening, the app
stops admitting completions (503 with ``Retry-After``; /readyz turns 503), and
requests already in flight, streams included, get up to ``shutdown_timeout_s``
(PERSONALIZE_SHUTDOWN_TIMEOUT_S, default 30 s) to finish; then what is left is
cancelled and the process exits.
"""

from __future__ import annotations

from collections.abc import Callable
from types import FrameType
from typing import Annotated

import typer
import uvicorn
from fastapi import FastAPI

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
) -> None:
    """Serve the OpenAI-compatible API (one process: one model, one batching decoder)."""
    from app.main import create_app_from_env

    settings = Settings()
    app = create_app_from_env()
    server = draining_server(app, settings, host=host or settings.host, port=port or settings.port, log_level=log_level)
    server.run()
