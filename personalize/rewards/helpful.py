"""``helpful``: the response is about what was asked, and actually answers it."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from personalize.errors import ConfigError
from personalize.rewards.base import check_batch
from personalize.rewards.embedding import Embedder, load_embedder
from personalize.rewards.text import is_blank, is_dangling, is_refusal, novel_word_count


class HelpfulReward:
    """Relevance of the response to the prompt, minus penalties for non-answers.
    Range [-1, 1], higher = more helpful.

    ``score = clip(cos - refusal_penalty * refusal - dangling_penalty * dangling
    - echo_penalty * echo, -1, 1)``, and exactly -1 for an empty or whitespace-only
    response, where

    - ``cos`` is the cosine similarity of the prompt and the response under the bundled
      all-MiniLM-L6-v2 sentence-embedding model (English; about 0.5-0.9 for a relevant
      answer, near 0 for an unrelated one; creative answers such as jokes score low);
    - ``refusal`` is 1 when the response refuses or hides behind being an AI
      ("I can't help with that", "As an AI language model, ...");
    - ``dangling`` is 1 when it stops where the answer should start ("Here's how:");
    - ``echo`` is 1 when it adds no content word beyond the prompt's own words.

    Penalties default to 0.5, 0.5 and 0.6 (an echo of the question has cosine near 1).

    :meth:`prefix_score` scores an unfinished response for reward shaping: the cosine
    minus the refusal penalty (a refusal shows from its first words), 0 for a blank
    prefix; the dangling and echo penalties, which nearly every half-written answer
    would earn, are left to the finished response.
    """

    name = "helpful"
    description = "prompt/response embedding similarity minus penalties for refusals, empty, dangling and echo answers"
    value_range = (-1.0, 1.0)

    def __init__(
        self,
        refusal_penalty: float = 0.5,
        dangling_penalty: float = 0.5,
        echo_penalty: float = 0.6,
        embedder: Embedder | None = None,
        device: str | None = None,
    ) -> None:
        for label, value in (
            ("refusal_penalty", refusal_penalty),
            ("dangling_penalty", dangling_penalty),
            ("echo_penalty", echo_penalty),
        ):
            if not 0.0 <= value <= 2.0:
                raise ConfigError(f"helpful: {label} must be in [0, 2], got {value}")
        self._refusal_penalty = refusal_penalty
        self._dangling_penalty = dangling_penalty
        self._echo_penalty = echo_penalty
        self._embedder = embedder
        self._device = device

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        return self._score(prompts, responses, finished=True)

    def prefix_score(self, prompts: Sequence[str], prefixes: Sequence[str]) -> torch.Tensor:
        """Potential of unfinished responses (class docstring), float32 of shape (N,), in [-1, 1]."""
        return self._score(prompts, prefixes, finished=False)

    def _score(self, prompts: Sequence[str], texts: Sequence[str], *, finished: bool) -> torch.Tensor:
        check_batch(self.name, prompts, texts)
        if not texts:
            return torch.zeros(0, dtype=torch.float32)
        embedder = self._embedder or load_embedder(self._device)
        cosine = embedder.similarity(prompts, texts)  # (N,)
        penalty = torch.tensor(
            [self._penalty(p, t, finished) for p, t in zip(prompts, texts, strict=True)],
            dtype=torch.float32,
        )  # (N,)
        blank = torch.tensor([is_blank(t) for t in texts], dtype=torch.bool)  # (N,)
        scores = (cosine - penalty).clamp(-1.0, 1.0)
        # a blank finished response scores -1 outright; a blank prefix is the empty prefix's potential, 0
        return torch.where(blank, torch.full_like(scores, -1.0 if finished else 0.0), scores).float()

    def _penalty(self, prompt: str, text: str, finished: bool) -> float:
        if is_blank(text):
            return 0.0  # scored outright
        penalty = self._refusal_penalty if is_refusal(text) else 0.0
        if finished:
            penalty += self._dangling_penalty if is_dangling(text) else 0.0
            penalty += self._echo_penalty if novel_word_count(prompt, text) == 0 else 0.0
        return penalty
