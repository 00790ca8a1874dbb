"""End to end on the real SmolLM2-135M: plain decoding, a LoRA head on it, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from personalize.decoding import Engine, GenerationRequest, Personalization, SamplingParams
from personalize.heads import MAX_HEAD_BYTES, load_head, new_head, save_head
from personalize.models import EMBEDDED_BACKBONE_ID, BaseModel, load_base_model

pytestmark = pytest.mark.e2e
PROMPT = "How do I clean my keyboard?"


def test_embedded_model_loads_from_cache_quickly(real_base: BaseModel, data_dir: Path) -> None:
    assert real_base.backbone_id == EMBEDDED_BACKBONE_ID
    assert real_base.hidden_size == 576 and real_base.vocab_size == 49152
    start = time.perf_counter()
    again = load_base_model("embedded", data_dir=data_dir, device="cpu")
    assert time.perf_counter() - start < 15  # cached safetensors, no GGUF conversion
    assert again.tokenizer_hash == real_base.tokenizer_hash


def test_zero_weights_match_transformers_greedy(data_dir: Path, tmp_path: Path) -> None:
    # token-for-token parity needs the same arithmetic: float32 on both sides (bf16 kernels differ in rounding)
    real_base = load_base_model(None, data_dir=data_dir, device="cpu", dtype=torch.float32)
    head = new_head(real_base, "concise")
    with torch.no_grad():
        head.output.up.weight.normal_(0, 0.05)
        assert head.adapter is not None
        for key in head.adapter:
            head.adapter[key].normal_(0, 0.02)
    folder = save_head(head, tmp_path / "concise")
    assert sum(p.stat().st_size for p in folder.iterdir()) < MAX_HEAD_BYTES
    engine = Engine(real_base, [load_head(folder, real_base)])
    ids = real_base.encode_prompt(PROMPT)
    want = real_base.model.generate(
        torch.tensor([ids]), max_new_tokens=24, do_sample=False, pad_token_id=real_base.pad_token_id
    )[0, len(ids) :].tolist()
    greedy = SamplingParams(max_new_tokens=24, temperature=0.0)
    plain = engine.generate([GenerationRequest(tuple(ids), greedy, Personalization({"concise": 0.0}))])[0]
    assert list(plain.token_ids) == want[: len(plain.token_ids)]
    assert "keyboard" in plain.text.lower()
    steered = engine.generate([GenerationRequest(tuple(ids), greedy, Personalization({"concise": 1.0}, beta=8.0))])[0]
    assert steered.token_ids != plain.token_ids
    assert steered.forward_rows == 2 * steered.completion_tokens + (steered.finish_reason == "stop") * 2


def test_cli_generate_json(data_dir: Path) -> None:
    env = {**os.environ, "PERSONALIZE_DATA_DIR": str(data_dir)}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "personalize.cli",
            "generate",
            PROMPT,
            "--max-new-tokens",
            "16",
            "--seed",
            "0",
            "--method",
            "base",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert {"text", "completion_tokens", "weights", "beta", "method"} <= data.keys()
    assert data["method"] == "base" and 0 < data["completion_tokens"] <= 16 and data["text"]
    bad = subprocess.run(
        [sys.executable, "-m", "personalize.cli", "generate", PROMPT, "--weights", "concise=abc"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert bad.returncode != 0 and "not a number" in bad.stderr
