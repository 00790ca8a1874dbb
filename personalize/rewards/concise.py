"""``concise``: short answers that are still real answers.

A length-only reward is hacked by steered decoding: the policy learns to stop right
before the answer ("Here's how to clean your keyboard:" then end of text). So the
length term is multiplied by an "is a real answer" term that is 0 for empty, dangling
or pure-filler responses and small for irrelevant ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from personalize.errors import ConfigError
from personalize.rewards.base import check_batch
from personalize.rewards.embedding import Embedder, load_embedder
from personalize.rewards.text import (
    count_tokens,
    ends_cleanly,
    is_blank,
    is_dangling,
    is_refusal,
    novel_word_count,
)


class ConciseReward:
    """Rewards short, complete, on-topic answers. Range [0, 1], higher = more concise.

    ``score = answer * length`` with

    - ``length = half_tokens / (half_tokens + n)``: 1 at zero tokens, 0.5 at
      ``half_tokens`` tokens, about 0.16 at 256 tokens with the default 48. ``n`` counts
      tokens with ``tokenizer`` (any Hugging Face tokenizer) if given, else words and
      punctuation marks (CJK characters count one each).
    - ``answer = relevance * completeness * substance``, each in [0, 1]:

      - ``relevance = floor + (1 - floor) * clip((cos - low) / (high - low), 0, 1)``,
        ``cos`` the prompt/response cosine similarity of the bundled MiniLM embedding
        model; defaults floor 0.1, low 0.1, high 0.4 (unrelated text has cos near 0, a
        relevant answer 0.4-0.9). An unrelated answer gets the floor, so it loses even
        to a long relevant one; the floor keeps answers the embedding model underrates
        (jokes: cos below 0.1) ranked by length among themselves.
      - ``completeness`` is 0 for a dangling response (ends on ':' or ',', on a bare list
        marker or heading, on "and"/"the", or its last sentence only announces content:
        "Here's how to clean your keyboard."), else 1, times ``unfinished`` (default 0.7)
        for a response cut mid-sentence without final punctuation and ``refusal``
        (default 0.5) for a refusal or "As an AI ..." answer.
      - ``substance = min(1, novel / min_novel_words)``: ``novel`` counts content words
        the response adds beyond the prompt's words and filler, so an echo of the
        question or "Sure, here's how!" scores 0.

    Empty and whitespace-only responses score 0, as does every dangling one, so any
    complete on-topic answer beats them; among real answers the shorter one wins.
    """

    name = "concise"
    description = (
        "short, complete, on-topic answers: length term times an is-a-real-answer term "
        "(relevant, not empty, not dangling)"
    )
    value_range = (0.0, 1.0)

    def __init__(
        self,
        tokenizer: Any = None,
        half_tokens: float = 48.0,
        relevance_floor: float = 0.1,
        relevance_low: float = 0.1,
        relevance_high: float = 0.4,
        unfinished: float = 0.7,
        refusal: float = 0.5,
        min_novel_words: int = 1,
        embedder: Embedder | None = None,
        device: str | None = None,
    ) -> None:
        if half_tokens <= 0:
            raise ConfigError(f"concise: half_tokens must be > 0, got {half_tokens}")
        if not 0.0 <= relevance_floor <= 1.0:
            raise ConfigError(f"concise: relevance_floor must be in [0, 1], got {relevance_floor}")
        if not -1.0 <= relevance_low < relevance_high <= 1.0:
            raise ConfigError(
                "concise: need -1 <= relevance_low < relevance_high <= 1, got "
                f"relevance_low={relevance_low}, relevance_high={relevance_high}"
            )
        if not 0.0 <= unfinished <= 1.0:
            raise ConfigError(f"concise: unfinished must be in [0, 1], got {unfinished}")
        if not 0.0 <= refusal <= 1.0:
            raise ConfigError(f"concise: refusal must be in [0, 1], got {refusal}")
        if min_novel_words < 1:
            raise ConfigError(f"concise: min_novel_words must be >= 1, got {min_novel_words}")
        self._tokenizer = tokenizer
        self._half_tokens = half_tokens
        self._floor = relevance_floor
        self._low = relevance_low
        self._high = relevance_high
        self._unfinished = unfinished
        self._refusal = refusal
        self._min_novel = min_novel_words
        self._embedder = embedder
        self._device = device

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        check_batch(self.name, prompts, responses)
        if not responses:
            return torch.zeros(0, dtype=torch.float32)
        tokens = torch.tensor(count_tokens(responses, self._tokenizer), dtype=torch.float32)
        length = self._half_tokens / (self._half_tokens + tokens)  # (N,)
        answer = self._relevance(prompts, responses) * self._form(prompts, responses)  # (N,)
        return (answer * length).float()

    def _relevance(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        embedder = self._embedder or load_embedder(self._device)
        cosine = embedder.similarity(prompts, responses)  # (N,)
        scaled = ((cosine - self._low) / (self._high - self._low)).clamp(0.0, 1.0)
        return self._floor + (1.0 - self._floor) * scaled

    def _form(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """completeness * substance per response, shape (N,)."""
        form = []
        for prompt, response in zip(prompts, responses, strict=True):
            if is_blank(response) or is_dangling(response):
                form.append(0.0)
                continue
            completeness = 1.0 if ends_cleanly(response) else self._unfinished
            completeness *= self._refusal if is_refusal(response) else 1.0
            substance = min(1.0, novel_word_count(prompt, response) / self._min_novel)
            form.append(completeness * substance)
        return torch.tensor(form, dtype=torch.float32)
