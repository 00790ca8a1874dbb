"""The real embedded base model (SmolLM2-135M), cached once per checkout in .data/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from personalize.models import BaseModel, load_base_model

DATA_DIR = Path(os.environ.get("PERSONALIZE_TEST_DATA_DIR", Path(__file__).resolve().parents[2] / ".data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    return DATA_DIR


@pytest.fixture(scope="session")
def real_base(data_dir: Path) -> BaseModel:
    return load_base_model(None, data_dir=data_dir, device="cpu")
