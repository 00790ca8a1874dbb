"""``positive``: sentiment of the response with VADER (lexicon bundled in ``vaderSentiment``)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import torch

from personalize.errors import RewardError
from personalize.rewards.base import check_batch

_lock = threading.Lock()
_analyzer: Any = None


def _load_analyzer() -> Any:
    global _analyzer
    with _lock:
        if _analyzer is None:
            try:
                from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
            except ImportError as exc:
                raise RewardError(
                    "the positive reward needs `vaderSentiment`; install it with `pip install vaderSentiment`"
                ) from exc
            _analyzer = SentimentIntensityAnalyzer()
        return _analyzer


class PositiveReward:
    """Positive sentiment of the response. Range [-1, 1], higher = more positive.

    The VADER compound score: a rule-based lexicon model (plain-text lexicon shipped in
    the ``vaderSentiment`` package, no pickle) that handles negation, intensifiers,
    capitals, "!" and emoji. -1 is most negative, 0 neutral (also the score of an empty
    response), +1 most positive. English lexicon: other languages mostly score near 0.
    Independent of the prompt.
    """

    name = "positive"
    description = "positive sentiment of the response (VADER compound score)"
    value_range = (-1.0, 1.0)

    def __init__(self) -> None:
        self._analyzer = _load_analyzer()

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        check_batch(self.name, prompts, responses)
        scores = [float(self._analyzer.polarity_scores(r)["compound"]) for r in responses]
        return torch.tensor(scores, dtype=torch.float32)
