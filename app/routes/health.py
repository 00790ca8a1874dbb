"""GET /healthz (the process is up), /readyz (model, heads and database ready), /metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy.exc import SQLAlchemyError

from app.deps import ServicesDep
from personalize.remote.engine import RemoteEngine

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(services: ServicesDep) -> JSONResponse:
    problems: list[str] = []
    try:
        services.db.ping()
    except SQLAlchemyError as exc:
        problems.append(f"database: {type(exc).__name__}")
    runtime = services.runtime
    body: dict[str, Any] = {"replica": services.replica_id, "redis": None}
    if services.cache.configured:
        body["redis"] = "ok" if services.cache.ping() else "unavailable (serving from the database)"
    if runtime is None:
        problems.append(f"model: {services.load_error or 'loading'}")
    else:
        body["model"] = runtime.model_id
        body["heads"] = {name: meta.version for name, meta in runtime.engine.objectives.items()}
        body["queue_depth"] = runtime.scheduler.depth
        if isinstance(runtime.engine, RemoteEngine):
            body["upstream"] = runtime.engine.upstream.name
            if not runtime.engine.healthy():
                problems.append(f"upstream: {runtime.engine.upstream.name} does not answer")
        if not runtime.head_sync.synced.is_set():
            problems.append("heads: not synced yet")
        if runtime.head_sync.failed:
            body["head_errors"] = dict(runtime.head_sync.failed)
    body["status"] = "ready" if not problems else "not ready"
    if problems:
        body["problems"] = problems
    return JSONResponse(body, status_code=200 if not problems else 503)


@router.get("/metrics")
def metrics(services: ServicesDep) -> Response:
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)
