"""Sequences: the token streams a batch decodes, what each is asked to do and what it produced so far.

A request becomes one or more sequences (its method decides how many and when);
each sequence has one base row in the batch plus one row per LoRA head it uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from personalize.decoding.config import FinishReason
from personalize.decoding.text import TextStream


@dataclass(frozen=True, eq=False)
class Perturbation:
    """AISP: add ``mean[t] + sigma · eps`` to the base row's final hidden state at response position t."""

    sigma: float
    mean: torch.Tensor | None = None  # (T, H) float32 on the decode device; None: zero


@dataclass(frozen=True)
class SequenceSpec:
    """One token stream to decode: a prompt, a seed and which heads steer (or score) it how strongly."""

    request_index: int
    prompt_ids: tuple[int, ...]
    seed: int
    temperature: float
    top_p: float
    top_k: int
    sample_top_k: int
    max_new_tokens: int
    stop: tuple[str, ...]
    ignore_eos: bool
    steer: tuple[tuple[str, float], ...]  # token level: (objective, beta * weight), non-zero only
    score: tuple[tuple[str, float], ...] = ()  # chunk level: (objective, weight) of the explicit heads ranking it
    perturb: Perturbation | None = None
    within_top_k: bool = False  # sample only among the base top-k
    top_logprobs: int = 0  # alternatives to report per position
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias) added to the base logits

    @property
    def heads(self) -> tuple[str, ...]:
        """Every head this sequence reads, steering ones first, each once."""
        return tuple(dict.fromkeys(name for name, _ in self.steer + self.score))


@dataclass
class SequenceOutput:
    """What one sequence produced, filled in as it decodes.

    Compute bookkeeping: ``steps`` tokens sampled, each by one forward of its ``rows`` rows, except
    ``free_steps`` (a first token sampled from a prefill another sequence of the request ran);
    ``prompt_fed`` prompt tokens it pushed through the model itself.
    """

    spec: SequenceSpec
    text: TextStream
    finish_reason: FinishReason | None = None
    rows: int = 1
    steps: int = 0
    prompt_fed: int = 0
    free_steps: int = 0
    value: float = 0.0
    """Chunk-level score of its last sampled token (weighted explicit values; ivg only)."""
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[tuple[tuple[int, float], ...]] = field(default_factory=list)
    stop_token_id: int | None = None
    """The end-of-sequence token that finished it (None: not finished by one)."""

    @property
    def token_ids(self) -> list[int]:
        return self.text.token_ids

    def fork(self, spec: SequenceSpec) -> SequenceOutput:
        """A child continuing this sequence's response (its cache is copied, never recomputed)."""
        text = replace(self.text, token_ids=list(self.text.token_ids))
        return SequenceOutput(
            spec,
            text,
            rows=self.rows,
            value=self.value,
            logprobs=list(self.logprobs),
            top_logprobs=list(self.top_logprobs),
        )
