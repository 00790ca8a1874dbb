"""The FastAPI application factory.

create_app(settings, engine_factory=...)   one app (tests build several)
create_app_from_env()                       what `personalize serve` runs
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from app.errors import install_error_handlers
from app.limits import BodyLimitMiddleware
from app.metrics import Metrics, MetricsMiddleware
from app.openapi import install_openapi
from app.routes import audit, completions, feedback, health, keys, models, objectives, rewards, users
from app.services import EngineFactory, Services, default_engine_factory
from personalize.settings import Settings

JSON_BODY_LIMIT = 8 * 1024 * 1024


def create_app(
    settings: Settings | None = None, engine_factory: EngineFactory | None = default_engine_factory
) -> FastAPI:
    """An app serving ``settings``; ``engine_factory=None`` serves the API without a model."""
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await run_in_threadpool(Services, settings, metrics)
        app.state.services = services
        services.start(engine_factory)
        try:
            yield
        finally:
            await run_in_threadpool(services.stop)

    app = FastAPI(
        title="personalize",
        summary="OpenAI-compatible completions, personalized per user at decoding time.",
        version="0.1.0",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    install_openapi(app)
    routers = (completions, models, objectives, rewards, users, feedback, keys, audit, health)
    for module in routers:
        app.include_router(module.router)

    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(
        BodyLimitMiddleware,
        default_bytes=JSON_BODY_LIMIT,
        upload_bytes=settings.max_upload_bytes,
        upload_path="/v1/objectives",
    )
    return app


def create_app_from_env() -> FastAPI:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return create_app(Settings())
