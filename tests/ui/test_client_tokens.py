"""The UI's building blocks without a server: the HTTP client (mock transport), streams, token colours."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from ui.client import (
    KNOWN_METHODS,
    AISPSettings,
    ApiClient,
    ApiError,
    ConflictError,
    ConnectionFailed,
    Delta,
    GenerationSettings,
    IVGSettings,
    TokenPush,
    methods_from_openapi,
)
from ui.config import UIConfig
from ui.streams import stream_side_by_side
from ui.tokens import objective_colours, strongest, tokens_html, total_push


def _sse(*payloads: object) -> bytes:
    lines = [f"data: {json.dumps(p)}\n\n" for p in payloads] + ["data: [DONE]\n\n"]
    return "".join(lines).encode()


def _client(handler: object) -> ApiClient:
    return ApiClient("http://api.test", "pz-key", transport=httpx.MockTransport(handler))  # type: ignore[arg-type]


def test_stream_parses_chunks_tokens_and_usage() -> None:
    seen: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        assert request.headers["authorization"] == "Bearer pz-key"
        body = _sse(
            {"choices": [{"delta": {"role": "assistant", "content": ""}}], "personalization": {"method": "vas"}},
            {
                "choices": [
                    {
                        "delta": {"content": "Hi"},
                        "token_contributions": [{"text": "Hi", "token_id": 5, "contributions": {"concise": 0.5}}],
                    }
                ]
            },
            {"choices": [{"delta": {}, "finish_reason": "stop"}]},
            {"choices": [], "usage": {"completion_tokens": 1}},
        )
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    settings = GenerationSettings(weights={"concise": 1.0}, beta=2.0, explain=True, seed=3, max_tokens=8)
    deltas = list(_client(handler).stream_chat("hello", settings))
    assert seen[0]["personalization"] == {"weights": {"concise": 1.0}, "beta": 2.0, "method": "vas", "explain": True}
    assert seen[0]["seed"] == 3 and seen[0]["max_tokens"] == 8 and seen[0]["stream"] is True
    assert "".join(d.text for d in deltas) == "Hi"
    assert [t for d in deltas for t in d.tokens] == [TokenPush("Hi", 5, {"concise": 0.5})]
    assert deltas[2].finish_reason == "stop" and deltas[3].completion_tokens == 1
    assert deltas[0].personalization == {"method": "vas"}


def test_errors_become_typed_exceptions() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            error = {
                "message": "profile version 1 is stale",
                "type": "x",
                "param": "version",
                "code": "version_conflict",
            }
            return httpx.Response(409, json={"error": error})
        if request.url.path == "/v1/chat/completions":
            return httpx.Response(200, content=_sse({"error": {"message": "decoding failed", "code": "internal"}}))
        return httpx.Response(401, json={"error": {"message": "invalid API key", "param": None, "code": None}})

    api = _client(handler)
    with pytest.raises(ConflictError) as conflict:
        api.save_profile("u1", GenerationSettings(), version=1)
    assert conflict.value.status == 409 and conflict.value.param == "version"
    with pytest.raises(ApiError, match="invalid API key") as unauthorized:
        api.me()
    assert unauthorized.value.status == 401
    with pytest.raises(ApiError, match="decoding failed"):
        list(api.stream_chat("hi", GenerationSettings()))


def test_an_unreachable_service_says_where_it_looked() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(ConnectionFailed, match=r"cannot reach the service at http://api\.test"):
        _client(handler).objectives()


def test_methods_come_from_the_openapi_enum() -> None:
    schema = {
        "components": {
            "schemas": {
                "PersonalizationIn": {
                    "properties": {"method": {"anyOf": [{"enum": ["base", "vas", "bon", "ivg"]}, {"type": "null"}]}}
                }
            }
        }
    }
    assert methods_from_openapi(schema) == ("base", "vas", "bon", "ivg")
    assert methods_from_openapi({}) == KNOWN_METHODS


def test_best_of_is_sent_only_for_bon() -> None:
    assert "best_of" not in GenerationSettings(method="vas").personalization()
    assert GenerationSettings(method="bon", best_of=8).personalization()["best_of"] == 8


def test_ivg_and_aisp_parameters_are_sent_only_with_their_method() -> None:
    ivg = IVGSettings(candidates=3, chunk_tokens=8, beams=1, implicit_weight=0.5)
    aisp = AISPSettings(sigma=1.0, lam=0.2, samples=2, iterations=3)
    for method in ("vas", "bon", "base"):
        sent = GenerationSettings(method=method, ivg=ivg, aisp=aisp).personalization()
        assert "ivg" not in sent and "aisp" not in sent
    sent = GenerationSettings(method="ivg", ivg=ivg, aisp=aisp).personalization()
    assert sent["ivg"] == {"candidates": 3, "chunk_tokens": 8, "beams": 1, "implicit_weight": 0.5}
    assert "aisp" not in sent
    sent = GenerationSettings(method="aisp", ivg=ivg, aisp=aisp).personalization()
    assert sent["aisp"] == {"sigma": 1.0, "lam": 0.2, "samples": 2, "iterations": 3} and "ivg" not in sent


def test_reward_scores_are_parsed_per_response() -> None:
    seen: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/rewards/score"
        seen.append(json.loads(request.content))
        return httpx.Response(
            200,
            json={
                "object": "reward_scores",
                "objectives": {"concise": [0.25, 0.5], "shouty": [3, 0]},
                "ranges": {"concise": [0.0, 1.0], "shouty": [0.0, None]},
                "rewards": {"concise": "concise", "shouty": "exclaims"},
                "head_versions": {"concise": "1", "shouty": "2"},
            },
        )

    scores = _client(handler).score_rewards("q", ["a", "b"])
    assert seen == [{"prompt": "q", "responses": ["a", "b"]}]
    assert scores.of(0) == {"concise": 0.25, "shouty": 3.0} and scores.of(1) == {"concise": 0.5, "shouty": 0.0}
    assert scores.ranges == {"concise": (0.0, 1.0), "shouty": (0.0, None)}
    _client(handler).score_rewards("q", ["a"], objectives=["concise"])
    assert seen[-1]["objectives"] == ["concise"]


def test_config_reads_the_environment() -> None:
    config = UIConfig.from_env({"PERSONALIZE_API_URL": "http://h:9/", "PERSONALIZE_UI_API_KEY": "pz-k"})
    assert config.api_url == "http://h:9" and config.prefill_api_key == "pz-k"
    with pytest.raises(ValueError, match="must start with http"):
        UIConfig.from_env({"PERSONALIZE_API_URL": "h:9"})


def test_streams_run_side_by_side_and_keep_errors() -> None:
    def ok() -> Iterator[Delta]:
        yield Delta(text="a")
        yield Delta(
            text="b", finish_reason="stop", completion_tokens=2, compute={"forwards": 3, "samples": 4, "flops": 2.5e9}
        )

    def broken() -> Iterator[Delta]:
        yield Delta(text="x")
        raise ApiError(400, "bad weights", param="personalization")

    updates: list[str] = []
    answers = stream_side_by_side({"ok": ok, "broken": broken}, lambda label, _: updates.append(label))
    assert answers["ok"].text == "ab" and answers["ok"].completion_tokens == 2 and answers["ok"].done
    assert answers["broken"].text == "x" and answers["broken"].error == "bad weights (personalization) [HTTP 400]"
    assert updates.count("ok") == 3 and updates.count("broken") == 2
    assert answers["ok"].length_label() == "2 tokens · 1 words · 2 characters"
    assert answers["ok"].compute_label() == "3 forwards · 4 samples · 2.5 GFLOPs"
    assert answers["broken"].compute_label() == ""  # the API said nothing about its cost


def test_each_token_takes_the_colour_of_its_strongest_push() -> None:
    assert strongest({"concise": 0.3, "helpful": 0.9}) == "helpful"
    assert strongest({"concise": -0.3}) is None and strongest({}) is None
    colours = objective_colours(["helpful", "concise"])
    assert list(colours) == ["concise", "helpful"] and objective_colours(["concise"])["concise"] == colours["concise"]
    tokens = [TokenPush("<b>", 1, {"concise": 1.0, "helpful": 0.2}), TokenPush(" ok", 2, {"concise": -1.0})]
    html = tokens_html(tokens, colours)
    assert "&lt;b&gt;" in html and "<b>" not in html  # model text is escaped
    assert 'data-objective="concise"' in html and 'data-objective=""' in html
    assert total_push(tokens) == {"concise": 0.0, "helpful": 0.2}
