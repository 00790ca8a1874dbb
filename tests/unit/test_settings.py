"""Settings read from the environment: the base model's dtype, the duel's size against the per-key limit."""

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


def test_a_duel_larger_than_one_key_may_decode_at_once_is_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    monkeypatch.setenv("PERSONALIZE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("PERSONALIZE_MAX_IN_FLIGHT_PER_KEY", "8")
    monkeypatch.setenv("PERSONALIZE_DUEL_CANDIDATES", "4")
    monkeypatch.setenv("PERSONALIZE_DUEL_SAMPLES", "2")
    assert Settings().duel_generations == 8
    monkeypatch.setenv("PERSONALIZE_DUEL_SAMPLES", "3")
    with pytest.raises(ValidationError, match="duel_candidates x duel_samples = 12"):
        Settings()
    monkeypatch.setenv("PERSONALIZE_MAX_IN_FLIGHT_PER_KEY", "0")  # no per-key limit
    assert Settings().duel_generations == 12
