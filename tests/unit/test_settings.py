"""Settings read from the environment: the base model's dtype."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from personalize.settings import Settings


def test_dtype_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("PERSONALIZE_DATA_DIR", str(tmp_path))
    assert Settings().torch_dtype is None  # auto: the device decides
    monkeypatch.setenv("PERSONALIZE_DTYPE", "bfloat16")
    assert Settings().torch_dtype is torch.bfloat16
    monkeypatch.setenv("PERSONALIZE_DTYPE", "float64")
    with pytest.raises(ValidationError, match="float32"):
        Settings()
