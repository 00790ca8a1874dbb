"""``personalize serve``: run the HTTP service under uvicorn (settings from the environment)."""

from __future__ import annotations

from typing import Annotated

import typer
import uvicorn

from personalize.settings import Settings


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default: PERSONALIZE_HOST or 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: PERSONALIZE_PORT or 8000).")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve the OpenAI-compatible API (one process: one model, one batching decoder)."""
    settings = Settings()
    uvicorn.run(
        "app.main:create_app_from_env",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        log_level=log_level,
    )
