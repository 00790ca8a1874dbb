"""The real `openai` SDK against the server running under uvicorn."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import openai
import pytest

from tests.integration.conftest import LiveServer, Service
from tests.integration.helpers import register_head

pytestmark = pytest.mark.integration


def test_openai_sdk_chat_stream_and_completion(service: Service, tiny_head_dir: Callable[..., Path]) -> None:
    register_head(service, tiny_head_dir("concise", seed=1))
    user_id, key = service.create_user()
    personalization = {"weights": {"concise": 1.0}, "beta": 2.0}
    with LiveServer(service.app) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)

        models = [m.id for m in client.models.list()]
        assert "default" in models

        chat = client.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": "How do I clean my keyboard?"}],
            max_tokens=8,
            seed=5,
            user=user_id,
            extra_body={"personalization": personalization},
        )
        assert chat.choices[0].message.role == "assistant"
        assert chat.usage is not None and chat.usage.completion_tokens >= 1
        echoed = (chat.model_extra or {})["personalization"]
        assert echoed["weights"] == {"concise": 1.0} and echoed["beta"] == 2.0
        assert echoed["head_versions"] == {"concise": "1"} and echoed["user"] == user_id

        stream = client.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": "How do I clean my keyboard?"}],
            max_tokens=8,
            seed=5,
            user=user_id,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"personalization": personalization},
        )
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == chat.choices[0].message.content
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == chat.usage.completion_tokens
        assert (chunks[0].model_extra or {})["personalization"]["head_versions"] == {"concise": "1"}

        completion = client.completions.create(
            model="default",
            prompt="The quick brown fox",
            max_tokens=5,
            user=user_id,
            extra_body={"personalization": {"weights": {"concise": -1.0}}},
        )
        assert isinstance(completion.choices[0].text, str)
        assert (completion.model_extra or {})["personalization"]["weights"] == {"concise": -1.0}

        with pytest.raises(openai.UnprocessableEntityError) as bad:
            client.chat.completions.create(
                model="default",
                messages=[{"role": "user", "content": "hi"}],
                extra_body={"personalization": {"weights": {"nope": 1.0}}},
            )
        assert bad.value.code == "unknown_objective" and bad.value.param == "personalization.weights.nope"

        with pytest.raises(openai.PermissionDeniedError):
            client.chat.completions.create(
                model="default", messages=[{"role": "user", "content": "hi"}], user="someone-else"
            )
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{server.url}/v1", api_key="pz-wrong", max_retries=0).models.list()


def test_openai_sdk_logprobs_n_and_logit_bias(service: Service, tiny_head_dir: Callable[..., Path]) -> None:
    """logprobs/top_logprobs in OpenAI's shapes (chat, text, streamed), n choices decoded together, and a
    logit_bias that bans a token or forces one."""
    import math

    from app.logprobs import _byte_alphabet
    from personalize.decoding.rng import derive_seed

    register_head(service, tiny_head_dir("concise", seed=1))
    _, key = service.create_user()
    steer = {"personalization": {"weights": {"concise": 1.0}, "beta": 2.0}}
    messages = [{"role": "user", "content": "How do I clean my keyboard?"}]
    tokenizer = service.app.state.services.runtime.base.tokenizer
    with LiveServer(service.app) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)

        def ask(**kw):
            return client.chat.completions.create(model="default", messages=messages, **kw)

        chat = ask(max_tokens=6, seed=3, logprobs=True, top_logprobs=3, extra_body=steer)
        content = chat.choices[0].logprobs.content
        assert content is not None and len(content) == chat.usage.completion_tokens
        joined = b"".join(bytes(entry.bytes) for entry in content).decode("utf-8", "ignore")
        assert joined == chat.choices[0].message.content.replace("\ufffd", "")
        for entry in content:
            assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
            assert entry.top_logprobs[0].logprob >= entry.top_logprobs[-1].logprob
            assert entry.logprob <= entry.top_logprobs[0].logprob
            assert sum(math.exp(t.logprob) for t in entry.top_logprobs) <= 1.0 + 1e-4
        streamed = ask(max_tokens=6, seed=3, logprobs=True, top_logprobs=3, stream=True, extra_body=steer)
        parts = [p for c in streamed if c.choices and c.choices[0].logprobs for p in c.choices[0].logprobs.content]
        assert [(p.token, round(p.logprob, 5)) for p in parts] == [(p.token, round(p.logprob, 5)) for p in content]
        assert ask(max_tokens=4, seed=3).choices[0].logprobs is None

        text = client.completions.create(model="default", prompt="The quick brown fox", max_tokens=5, logprobs=2)
        lp = text.choices[0].logprobs
        assert lp is not None and len(lp.tokens) == len(lp.token_logprobs) == len(lp.text_offset) >= 1
        assert lp.text_offset[0] == 0 and all(1 <= len(alternatives) <= 2 for alternatives in lp.top_logprobs)
        assert any(len(alternatives) == 2 for alternatives in lp.top_logprobs)  # (texts that decode alike merge)
        assert all(b - a == len(t) for a, b, t in zip(lp.text_offset, lp.text_offset[1:], lp.tokens, strict=False))

        two = ask(max_tokens=6, seed=3, n=2)
        alone = [ask(max_tokens=6, seed=seed) for seed in (3, derive_seed(3, 1))]
        assert [c.index for c in two.choices] == [0, 1]
        assert [c.message.content for c in two.choices] == [a.choices[0].message.content for a in alone]
        assert two.usage.completion_tokens == sum(a.usage.completion_tokens for a in alone)
        texts = {0: "", 1: ""}
        for chunk in ask(max_tokens=6, seed=3, n=2, stream=True):
            for choice in chunk.choices:
                texts[choice.index] += choice.delta.content or ""
        assert texts == {0: two.choices[0].message.content, 1: two.choices[1].message.content}

        table = {b: ch for ch, b in _byte_alphabet().items()}
        greedy = ask(max_tokens=1, temperature=0, logprobs=True, top_logprobs=5, extra_body=steer)
        best = greedy.choices[0].logprobs.content[0]
        best_id = tokenizer.convert_tokens_to_ids("".join(table[b] for b in best.bytes))
        banned = ask(
            max_tokens=1,
            temperature=0,
            logprobs=True,
            top_logprobs=5,
            logit_bias={str(best_id): -100},
            extra_body=steer,
        )
        assert all(t.bytes != best.bytes for t in banned.choices[0].logprobs.content[0].top_logprobs)
        forced_id = tokenizer.convert_tokens_to_ids("".join(table[b] for b in best.top_logprobs[-1].bytes))
        forced = ask(max_tokens=1, temperature=0, logprobs=True, logit_bias={str(forced_id): 100}, extra_body=steer)
        assert forced.choices[0].logprobs.content[0].bytes == best.top_logprobs[-1].bytes
        with pytest.raises(openai.UnprocessableEntityError) as bad:
            ask(logit_bias={"999999": 5})
        assert bad.value.param == "logit_bias"
        with pytest.raises(openai.UnprocessableEntityError) as bad:
            ask(top_logprobs=2)
        assert bad.value.param == "top_logprobs"
