"""The OpenAPI document validates and declares every status the service answers, with its error body."""

from __future__ import annotations

import json
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from app.main import create_app
from app.schemas import ChatCompletionRequest, PersonalizationIn

ERROR_REF = "#/components/schemas/ErrorResponse"
UNAUTHENTICATED = {("get", "/healthz"), ("get", "/readyz"), ("get", "/metrics")}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    spec: dict[str, Any] = create_app(engine_factory=None).openapi()
    return spec


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m, p, op) for p, ops in document["paths"].items() for m, op in ops.items()]


def test_every_schema_is_valid_json_schema_and_every_ref_resolves(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1")
    schemas = document["components"]["schemas"]
    for name, schema in schemas.items():
        Draft202012Validator.check_schema(schema)  # raises on an invalid schema
        assert "prefixItems" not in json.dumps(schema), name
    refs = {part.split('"')[0] for part in json.dumps(document).split('"$ref": "')[1:]}
    assert refs and all(ref.removeprefix("#/components/schemas/") in schemas for ref in refs), refs


def test_every_error_status_is_declared_with_the_error_body(document: dict[str, Any]) -> None:
    for method, path, operation in _operations(document):
        responses = operation["responses"]
        if (method, path) not in UNAUTHENTICATED:
            assert {"401", "429", "503"} <= set(responses), (method, path)
            assert "Retry-After" in responses["429"]["headers"] and "Retry-After" in responses["503"]["headers"]
        if "requestBody" in operation:
            assert {"413", "422"} <= set(responses), (method, path)
        for status, response in responses.items():
            if int(status) >= 400 and path != "/readyz":
                assert response["content"]["application/json"]["schema"] == {"$ref": ERROR_REF}, (path, status)
    completions = document["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert {"400", "403", "404", "504"} <= set(completions)


def test_metrics_are_declared_as_text(document: dict[str, Any]) -> None:
    content = document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert set(content) == {"text/plain"}


def test_integral_numbers_are_integers_where_the_schema_says_integer() -> None:
    accepted = PersonalizationIn.model_validate({"top_k": 30.0, "best_of": 4.0, "aisp": {"samples": 2.0}})
    assert (accepted.top_k, accepted.best_of) == (30, 4) and accepted.aisp is not None and accepted.aisp.samples == 2
    for bad in ({"top_k": 30.5}, {"top_k": "30"}, {"top_k": True}):
        with pytest.raises(ValueError):
            PersonalizationIn.model_validate(bad)
    body = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "x"}], "max_tokens": 30.0})
    assert body.max_tokens == 30
