"""Every error the service returns, in OpenAI's shape, mapped in this one place.

    {"error": {"message": str, "type": str, "param": str | null, "code": str | null}}

Library exceptions (:mod:`personalize.errors`, :mod:`personalize.db.errors`) are
mapped by class below; the service's own refusals raise :class:`APIError`.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
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


async def _on_unexpected(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return _json(APIError(500, "internal server error", type="server_error", code="internal_error"))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _on_api_error)
    app.add_exception_handler(PersonalizeError, _on_library_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
