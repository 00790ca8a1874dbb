"""The contract between a decoding method and the batch that runs it.

A :class:`RequestRun` turns one request into sequences (``start``) and, after every
step in which the request produced tokens, tells the batch what to do next
(``update`` returns a :class:`Decision`): stop some sequences, branch children that
continue from a live sequence's cache, queue fresh sequences to prefill, or give
the answer. Runs see only Python values (tokens, texts, scores) that the batch
already copied from the device once per step; they never touch tensors of the
decode loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from personalize.decoding.config import GenerationRequest
from personalize.decoding.sequences import Perturbation, SequenceOutput, SequenceSpec

RankFn = Callable[[GenerationRequest, Sequence[str]], list[float]]
"""Weighted reward of each response text to a request (the batch's reward, or the objectives' rewards)."""


@dataclass(frozen=True)
class RunContext:
    """What runs may know about the engine: head kinds, how to rank texts, and the hidden size/device."""

    kinds: Mapping[str, str]  # objective -> head kind ("lora", "linear", "implicit")
    rank: RankFn
    hidden_size: int
    device: torch.device


@dataclass(frozen=True)
class Answer:
    """The sequence whose text answers the request, and its reward when one was computed."""

    number: int
    reward: float | None = None


@dataclass
class Decision:
    """What the batch does for a request after a step."""

    retire: list[int] = field(default_factory=list)
    """Live sequences to stop (superseded by children, or out of the search)."""
    branch: list[tuple[int, SequenceSpec]] = field(default_factory=list)
    """(parent, child spec): the child continues from the parent's tokens and KV cache."""
    spawn: list[SequenceSpec] = field(default_factory=list)
    """Sequences to prefill from their prompt (they join after the next forward)."""
    answer: Answer | None = None


class RequestRun:
    """One request's method: how it becomes sequences and how they become one answer."""

    streams: bool = True
    """Whether tokens can be shown as they are produced."""

    def __init__(self, index: int, request: GenerationRequest, seed: int, context: RunContext) -> None:
        self.index = index
        self.request = request
        self.seed = seed
        self.context = context

    def start(self) -> list[SequenceSpec]:
        """The sequences to prefill when the request joins."""
        raise NotImplementedError

    def update(self, outputs: Sequence[SequenceOutput], live: list[int], finished: list[int]) -> Decision:
        """After a step: ``live`` sequences of this request that go on, ``finished`` ones that just ended."""
        raise NotImplementedError

    def spec(
        self,
        seed: int,
        *,
        steer: tuple[tuple[str, float], ...] = (),
        score: tuple[tuple[str, float], ...] = (),
        perturb: Perturbation | None = None,
    ) -> SequenceSpec:
        """A sequence decoding this request's prompt with its sampling parameters."""
        p, s = self.request.personalization, self.request.sampling
        return SequenceSpec(
            request_index=self.index,
            prompt_ids=self.request.prompt_ids,
            seed=seed,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=p.top_k,
            sample_top_k=s.top_k,
            max_new_tokens=s.max_new_tokens,
            stop=s.stop,
            ignore_eos=s.ignore_eos,
            steer=steer,
            score=score,
            perturb=perturb,
            within_top_k=p.within_top_k,
            top_logprobs=s.top_logprobs,
            logit_bias=tuple(s.logit_bias.items()),
        )
