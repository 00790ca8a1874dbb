"""Every error the service returns, in OpenAI's shape, mapped in this one place.

    {"error": {"message": str, "type": str, "param": str | null, "code": str | null}}

Library exceptions (:mod:`personalize.errors`, :mod:`personalize.db.errors`) are
mapped by class below; the service's own refusals raise :class:`APIError`. A
database that cannot be reached (connection refused or lost, a timeout) is a 503
with ``Retry-After``, never a 500.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from personalize.db.errors import AlreadyExistsError, NotFoundError, VersionConflictError
from personalize.errors import (
    BackboneMismatchError,
    ConfigError,
    ContextLengthError,
    HeadError,
    ModelLoadError,
    PersonalizeError,
    RewardError,
    TokenizerMismatchError,
    UnknownMethodError,
    UnknownObjectiveError,
    UnsafeArtifactError,
    UpstreamError,
    UpstreamTimeoutError,
)

log = logging.getLogger(__name__)

INVALID = "invalid_request_error"
DATABASE_OUTAGES: tuple[type[Exception], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,
    sa_exc.DisconnectionError,
)
"""Database errors that mean "not reachable now" (an outage), as opposed to a bad query."""
DEFAULT_DB_RETRY_AFTER_S = 5


class APIError(Exception):
    """A refusal with its HTTP status and OpenAI error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers


_STATUS_DOC = {
    400: "The body is not valid JSON.",
    401: "Missing, unknown, revoked or expired API key.",
    403: "The API key may not do this (an admin key is needed, or it is another user's resource).",
    404: "The named resource does not exist.",
    409: "Conflict: a stale profile version, or a name or version that is taken.",
    413: "The request body is over the size limit.",
    422: "A field is invalid, unsupported or over a limit; `error.param` names it.",
    429: "Too many requests: per-minute rate, requests in flight for this key, or a full decoder queue "
    "(see `Retry-After` and the `x-ratelimit-*` headers).",
    503: "Not available now: the database cannot be reached, the model is not ready, or the server is "
    "shutting down (see `Retry-After`).",
    504: "The request's server-side deadline passed before it finished.",
}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}


def error_responses(*statuses: int | str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, each with the error body's schema."""
    from app.schemas import ErrorResponse

    out: dict[int | str, dict[str, Any]] = {}
    for status in sorted({int(s) for s in statuses}):
        entry: dict[str, Any] = {"model": ErrorResponse, "description": _STATUS_DOC[status]}
        if status in (429, 503):
            entry["headers"] = _RETRY_AFTER
        out[status] = entry
    return out


def unauthorized(message: str) -> APIError:
    return APIError(
        401,
        message,
        type="authentication_error",
        code="invalid_api_key",
        headers={"WWW-Authenticate": "Bearer"},
    )


def forbidden(message: str, param: str | None = None) -> APIError:
    return APIError(403, message, type="permission_error", param=param, code="forbidden")


def not_ready(message: str) -> APIError:
    return APIError(503, message, type="server_error", code="not_ready")


# (exception class, status, code, param): the first matching class wins.
_LIBRARY_ERRORS: tuple[tuple[type[Exception], int, str, str | None], ...] = (
    (UnknownObjectiveError, 422, "unknown_objective", "personalization.weights"),
    (UnknownMethodError, 422, "unknown_method", "personalization.method"),
    (ContextLengthError, 422, "context_length_exceeded", "messages"),
    (UnsafeArtifactError, 422, "unsafe_artifact", "file"),
    (BackboneMismatchError, 422, "backbone_mismatch", "file"),
    (TokenizerMismatchError, 422, "tokenizer_mismatch", "file"),
    (HeadError, 422, "invalid_head", "file"),
    (RewardError, 422, "reward_error", "personalization"),
    (ConfigError, 422, "invalid_value", None),
    (VersionConflictError, 409, "version_conflict", "version"),
    (AlreadyExistsError, 409, "already_exists", None),
    (NotFoundError, 404, "not_found", None),
    (ModelLoadError, 503, "model_unavailable", None),
    (UpstreamTimeoutError, 504, "upstream_timeout", None),
    (UpstreamError, 502, "upstream_error", None),
)


def error_body(message: str, type: str, param: str | None, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def api_error_for(exc: PersonalizeError, param: str | None = None) -> APIError:
    """The APIError for a library exception (``param`` overrides the default field)."""
    for cls, status, code, default_param in _LIBRARY_ERRORS:
        if isinstance(exc, cls):
            kind = "not_found_error" if status == 404 else INVALID if status < 500 else "server_error"
            return APIError(status, str(exc), type=kind, param=param or default_param, code=code)
    return APIError(422, str(exc), param=param, code="invalid_value")


def _json(exc: APIError) -> JSONResponse:
    return JSONResponse(
        error_body(exc.message, exc.type, exc.param, exc.code),
        status_code=exc.status,
        headers=exc.headers,
    )


def _param_of(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or None


async def _on_api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return _json(exc)


async def _on_library_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, PersonalizeError)
    return _json(api_error_for(exc))


async def _on_validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": "invalid"}
    loc = tuple(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        return _json(APIError(400, f"malformed JSON body: {first.get('msg')}", code="json_invalid"))
    param = _param_of(loc)
    message = f"{param or 'request'}: {first.get('msg')}"
    if "input" in first and first.get("type") != "missing":
        message += f" (got {first['input']!r})"[:300]
    if len(errors) > 1:
        message += f"; and {len(errors) - 1} more problem(s)"
    return _json(APIError(422, message, param=param, code="invalid_value"))


async def _on_http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    kind = {401: "authentication_error", 403: "permission_error", 404: "not_found_error"}
    return _json(
        APIError(
            exc.status_code,
            str(exc.detail),
            type=kind.get(exc.status_code, INVALID if exc.status_code < 500 else "server_error"),
            code=None,
            headers=dict(exc.headers or {}),
        )
    )


def database_unavailable(retry_after_s: int = DEFAULT_DB_RETRY_AFTER_S) -> APIError:
    return APIError(
        503,
        f"the database cannot be reached right now; retry in {retry_after_s} s",
        type="server_error",
        code="database_unavailable",
        headers={"Retry-After": str(retry_after_s)},
    )


async def _on_database_outage(request: Request, exc: Exception) -> JSONResponse:
    log.warning("database unavailable during %s %s: %s", request.method, request.url.path, type(exc).__name__)
    services = getattr(request.app.state, "services", None)
    retry = services.settings.db_retry_after_s if services is not None else DEFAULT_DB_RETRY_AFTER_S
    return _json(database_unavailable(retry))


async def _on_unexpected(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return _json(APIError(500, "internal server error", type="server_error", code="internal_error"))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _on_api_error)
    app.add_exception_handler(PersonalizeError, _on_library_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    for outage in DATABASE_OUTAGES:
        app.add_exception_handler(outage, _on_database_outage)
    app.add_exception_handler(Exception, _on_unexpected)
