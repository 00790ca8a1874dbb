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
