"""GET /healthz (the process is up), /readyz (model, heads, decoder and database ready), /metrics.

/readyz answers 503 with ``problems`` while the database cannot be reached, the
model is loading (or failed to load and waits for its next try), the decoder
thread is dead or stuck (busy with no step ended for ``decoder_stall_s``), the
heads are not synced yet, or the server is shutting down.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field
from sqlalchemy.exc import SQLAlchemyError

from app.deps import ServicesDep
from personalize.remote.engine import RemoteEngine

router = APIRouter(tags=["health"])


class HealthOut(BaseModel):
    status: Literal["ok"]


class ReadinessOut(BaseModel):
    """What /readyz knows; ``problems`` is there only when ``status`` is ``not ready``."""

    status: Literal["ready", "not ready"]
    replica: str
    redis: str | None = Field(description="null: no Redis configured.")
    model: str | None = None
    heads: dict[str, str] | None = None
    queue_depth: int | None = None
    head_errors: dict[str, str] | None = None
    problems: list[str] | None = None


METRICS_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Prometheus text format.",
        "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
    }
}


@router.get("/healthz")
def healthz() -> HealthOut:
    return HealthOut(status="ok")


@router.get(
    "/readyz",
    response_model=ReadinessOut,
    responses={503: {"model": ReadinessOut, "description": "Not ready: `problems` says why."}},
)
def readyz(services: ServicesDep) -> JSONResponse:
    problems: list[str] = []
    if services.draining:
        problems.append("shutting down")
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
        decoder = runtime.scheduler.health(services.settings.decoder_stall_s)
        if decoder is not None:
            problems.append(decoder)
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


@router.get("/metrics", response_class=Response, responses=METRICS_DOC)
def metrics(services: ServicesDep) -> Response:
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)
