"""The OpenAPI document, made to match what the service really answers.

FastAPI declares its own 422 body (``HTTPValidationError``) on every operation that
takes parameters; this service answers every error in OpenAI's shape instead, so
those declarations are replaced by :class:`app.schemas.ErrorResponse` (and the
unused schemas dropped). Each route declares its other error statuses itself
(:func:`app.errors.error_responses`).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

FASTAPI_422 = "#/components/schemas/HTTPValidationError"
ERROR_REF = "#/components/schemas/ErrorResponse"


def _fix_validation_errors(document: dict[str, Any]) -> None:
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            response = operation.get("responses", {}).get("422")
            if response is None:
                continue
            schema = response.get("content", {}).get("application/json", {}).get("schema", {})
            if schema.get("$ref") == FASTAPI_422:
                response["description"] = "A field is invalid; `error.param` names it."
                response["content"]["application/json"]["schema"] = {"$ref": ERROR_REF}
    schemas = document.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
            )
            _fix_validation_errors(document)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
