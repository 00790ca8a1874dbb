"""``personalization.explain``: per-token contributions of each steering objective, streamed and not."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Service
from tests.integration.helpers import chat, register_head, sse_events

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("backend", ["sqlite"], indirect=True)]
STEER = {"weights": {"concise": 1.0, "helpful": -0.5}, "beta": 2.0, "method": "vas", "explain": True}


@pytest.fixture
def steered(service: Service, tiny_head_dir: Callable[..., Path]) -> Service:
    register_head(service, tiny_head_dir("concise", seed=1))
    register_head(service, tiny_head_dir("helpful", kind="linear", seed=2))
    return service


def _streamed(service: Service, **body: Any) -> tuple[str, list[dict[str, Any]], list[Any]]:
    response = chat(service, stream=True, **body)
    assert response.status_code == 200, response.text
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if isinstance(e, dict)]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    tokens = [t for c in chunks for t in c["choices"][0].get("token_contributions") or []]
    return text, tokens, chunks


def test_each_token_carries_each_objectives_push(steered: Service) -> None:
    response = chat(steered, max_tokens=8, seed=3, temperature=0.0, personalization=STEER)
    assert response.status_code == 200, response.text
    body = response.json()
    choice = body["choices"][0]
    tokens = choice["token_contributions"]
    assert "".join(t["text"] for t in tokens) == choice["message"]["content"]
    eos = 1 if choice["finish_reason"] == "stop" else 0
    assert len(tokens) == body["usage"]["completion_tokens"] + eos
    assert all(set(t["contributions"]) == {"concise", "helpful"} for t in tokens)
    assert all(isinstance(t["token_id"], int) for t in tokens)
    assert any(abs(v) > 1e-4 for t in tokens for v in t["contributions"].values())  # random heads do push


def test_streamed_chunks_carry_the_same_contributions(steered: Service) -> None:
    whole = chat(steered, max_tokens=8, seed=3, temperature=0.0, personalization=STEER).json()
    text, tokens, chunks = _streamed(steered, max_tokens=8, seed=3, temperature=0.0, personalization=STEER)
    assert text == whole["choices"][0]["message"]["content"]
    assert tokens == whole["choices"][0]["token_contributions"]
    for c in chunks:  # a chunk's entries spell out exactly that chunk's text
        entries = c["choices"][0].get("token_contributions")
        if entries is not None:
            assert "".join(t["text"] for t in entries) == (c["choices"][0]["delta"].get("content") or "")


def test_without_explain_there_is_no_extension_field(steered: Service) -> None:
    plain = {k: v for k, v in STEER.items() if k != "explain"}
    body = chat(steered, max_tokens=4, seed=3, personalization=plain).json()
    assert "token_contributions" not in body["choices"][0]
    _, tokens, chunks = _streamed(steered, max_tokens=4, seed=3, personalization=plain)
    assert tokens == [] and all("token_contributions" not in c["choices"][0] for c in chunks)


def test_unsteered_tokens_have_no_contributions(steered: Service) -> None:
    override = {**STEER, "method": "base"}
    tokens = chat(steered, max_tokens=5, seed=3, personalization=override).json()["choices"][0]["token_contributions"]
    assert tokens and all(t["contributions"] == {} for t in tokens)


def test_text_completions_explain_too(steered: Service) -> None:
    response = steered.client.post(
        "/v1/completions",
        json={"prompt": "The quick brown", "max_tokens": 5, "seed": 1, "personalization": STEER},
        headers=steered.auth(),
    )
    choice = response.json()["choices"][0]
    assert "".join(t["text"] for t in choice["token_contributions"]) == choice["text"]


def test_openapi_documents_the_option_and_the_field(steered: Service) -> None:
    schema = steered.client.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    assert "explain" in components["PersonalizationIn"]["properties"]
    assert set(components["TokenContribution"]["properties"]) == {"text", "token_id", "contributions"}
    ok = schema["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]
    assert ok["content"]["application/json"]["schema"]["$ref"].endswith("/ChatCompletionResponse")


def test_best_of_n_explains_the_whole_answer_as_unsteered(steered: Service) -> None:
    override = {**STEER, "method": "bon", "best_of": 2}
    body = chat(steered, max_tokens=5, seed=3, personalization=override).json()
    choice = body["choices"][0]
    tokens = choice["token_contributions"]
    assert "".join(t["text"] for t in tokens) == choice["message"]["content"]
    assert len(tokens) == 1 and tokens[0]["contributions"] == {}  # one event: the winning sample, unsteered
