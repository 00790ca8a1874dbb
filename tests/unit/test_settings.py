"""Settings read from the environment: the base model's dtype, a duel's size within the per-key limit."""

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


def test_a_duel_shrinks_to_what_one_key_may_decode_at_once(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("PERSONALIZE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("PERSONALIZE_DUEL_CANDIDATES", "4")
    monkeypatch.setenv("PERSONALIZE_DUEL_SAMPLES", "3")
    monkeypatch.setenv("PERSONALIZE_MAX_IN_FLIGHT_PER_KEY", "0")  # no per-key limit: as set
    assert Settings().duel_shape == (4, 3) and Settings().duel_generations == 12
    monkeypatch.setenv("PERSONALIZE_MAX_IN_FLIGHT_PER_KEY", "8")  # samples give way first
    assert Settings().duel_shape == (4, 2) and Settings().duel_generations == 8
    monkeypatch.setenv("PERSONALIZE_MAX_IN_FLIGHT_PER_KEY", "3")  # then candidates, down to two
    assert Settings().duel_shape == (3, 1)
    monkeypatch.setenv("PERSONALIZE_MAX_IN_FLIGHT_PER_KEY", "1")  # a duel is at least a pair (it gets 429)
    assert Settings().duel_shape == (2, 1)


def test_the_default_duel_draws_sixteen_answers_that_decode_in_one_batch(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    monkeypatch.setenv("PERSONALIZE_DATA_DIR", str(tmp_path))
    settings = Settings()
    assert settings.duel_shape == (4, 4)  # what docs/feedback.md measures
    assert settings.duel_generations <= min(settings.max_in_flight_per_key, settings.max_batch_size)
    shipped_heads = 4  # every answer steered by each: a base row and a row per head
    assert settings.duel_generations * (1 + shipped_heads) <= settings.max_batch_rows
    assert settings.max_request_rows <= settings.max_batch_rows
