"""A real serving engine as the base model: vLLM's CPU build serves the embedded SmolLM2, and the shipped heads
steer it from here, through ``personalize generate --remote-url`` and through ``personalize serve`` queried with
the openai SDK. The test sets vLLM up itself (its own virtual environment, scripts/vllm.sh), as a fresh machine
needs; the first run installs it (a few minutes), later runs reuse it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from personalize.models import BaseModel
from tests.e2e.conftest import user_env

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
MODEL = "smollm2"
PROMPT = "How do I clean my keyboard without damaging it?"


@pytest.fixture(scope="module")
def vllm(data_dir: Path, real_base: BaseModel) -> Iterator[str]:
    """vLLM serving the cached embedded model on a free port, for this module's tests (installed on first use)."""
    from bench.servers import start_vllm
    from tests.integration.conftest import free_port

    server = start_vllm(data_dir, MODEL, free_port())
    try:
        yield server.url
    finally:
        server.stop()


def _generate(data_dir: Path, url: str, *args: str) -> dict:
    env = {**user_env(data_dir), "PERSONALIZE_DATA_DIR": str(data_dir)}
    argv = [sys.executable, "-m", "personalize.cli", "generate", PROMPT, "--remote-url", url, "--remote-model", MODEL]
    out = subprocess.run([*argv, *args, "--json"], capture_output=True, text=True, env=env, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return dict(json.loads(out.stdout))


def test_generate_steers_the_vllm_model_and_passes_its_own_answers_through(data_dir: Path, vllm: str) -> None:
    steered = _generate(data_dir, vllm, "--weights", "concise=1", "--max-new-tokens", "64", "--seed", "0")
    compute = steered["compute"]
    assert steered["text"] and 0 < steered["completion_tokens"] <= 64
    assert compute["upstream_calls"] >= 1 and compute["accepted_tokens"] <= compute["upstream_tokens"]
    assert compute["processed_tokens"] > 0  # the heads ran here, on the local backbone
    plain = _generate(data_dir, vllm, "--method", "base", "--max-new-tokens", "24", "--seed", "3", "--temperature", "0")
    assert plain["compute"]["upstream_calls"] == 1 and plain["compute"]["processed_tokens"] == 0
    # vLLM's own greedy answer to the same prompt, asked directly: the pass-through must be exactly it
    from personalize.models import load_base_model

    base = load_base_model(None, data_dir=data_dir, device="cpu")
    direct = httpx.post(
        f"{vllm}/v1/completions",
        json={"model": MODEL, "prompt": base.encode_prompt(PROMPT), "max_tokens": 24, "temperature": 0},
        timeout=120,
    ).json()
    assert plain["text"] == direct["choices"][0]["text"]


def test_serve_with_a_remote_model_answers_the_openai_sdk(data_dir: Path, vllm: str, tmp_path: Path) -> None:
    openai = pytest.importorskip("openai")
    from app.demo import prepare_demo
    from personalize.heads import SHIPPED_HEADS_DIR
    from personalize.settings import Settings
    from tests.integration.conftest import free_port, wait_until

    data = tmp_path / "data"
    data.mkdir()
    (data / "models").symlink_to(data_dir / "models")
    setup = prepare_demo(Settings(data_dir=data, redis_url=None, database_url=""), [SHIPPED_HEADS_DIR])
    port = free_port()
    argv = [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--log-level", "warning"]
    argv += ["--remote-url", vllm, "--remote-model", MODEL]
    process = subprocess.Popen(argv, env=user_env(data), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the service exited: {process.stderr.read() if process.stderr else ''}")
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(ready, timeout_s=300, what="the service to get ready")
        assert httpx.get(f"{url}/readyz").json()["upstream"].startswith(f"upstream {vllm}")
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=setup.keys.user_key)
        messages = [{"role": "user", "content": PROMPT}]
        body = {"personalization": {"weights": {"concise": 1.0}}}
        reply = client.chat.completions.create(
            model="default", messages=messages, max_tokens=48, seed=1, extra_body=body
        )
        assert reply.choices[0].message.content
        compute = reply.model_extra["compute"]
        assert compute["upstream_calls"] >= 1 and compute["upstream_tokens"] >= compute["accepted_tokens"]
        chunks = list(
            client.chat.completions.create(
                model="default", messages=messages, max_tokens=32, seed=1, stream=True, extra_body=body
            )
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        refused = httpx.post(
            f"{url}/v1/chat/completions",
            json={
                "model": "default",
                "messages": messages,
                "personalization": {"method": "aisp", "weights": {"concise": 1}},
            },
            headers={"Authorization": f"Bearer {setup.keys.user_key}"},
        )
        assert refused.status_code == 422 and "remote base model" in refused.json()["error"]["message"]
    finally:
        process.terminate()
        process.wait(30)
