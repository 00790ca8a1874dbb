"""Shared fixtures: a tiny random Llama with a byte-level BPE tokenizer, built in seconds, nothing downloaded."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from personalize.heads import ValueHead, new_head, save_head
from personalize.models import BaseModel
from tests.tiny import build_tiny_base


@pytest.fixture(scope="session")
def tiny_base() -> BaseModel:
    """A 2-layer, hidden-64 random Llama + byte-level BPE (vocab ~512), fixed seed."""
    return build_tiny_base()


@pytest.fixture()
def fresh_tiny_base() -> BaseModel:
    """A private copy for tests that load heads into the model (wrapping its layers)."""
    return build_tiny_base()


def randomize_head(head: ValueHead, seed: int, scale: float = 0.5) -> ValueHead:
    """Give a fresh (neutral) head random non-zero weights so it actually steers."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in head.output.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
        if head.adapter is not None:
            for key, tensor in head.adapter.items():
                head.adapter[key] = torch.randn(tensor.shape, generator=gen) * 0.1
    return head


@pytest.fixture()
def tiny_head_dir(tmp_path: Path, tiny_base: BaseModel) -> Callable[..., Path]:
    """Factory: ``tiny_head_dir("concise", kind="lora", seed=1)`` saves a steering head and returns its folder
    (``reward=`` sets the reward its head.json names)."""

    def make(
        objective: str = "concise", *, kind: str = "lora", seed: int = 1, version: str = "1", reward: str = ""
    ) -> Path:
        head = new_head(tiny_base, objective, kind=kind, version=version, reward=reward)  # type: ignore[arg-type]
        head = randomize_head(head, seed)
        return save_head(head, tmp_path / f"{objective}-{kind}-{version}")

    return make
