"""A running batch: requests join between steps, finished or cancelled ones leave at once.

The batch is the scheduler of the decoder: it decides, before every forward, which sequences
run and what each is fed (its last sampled token, or the next chunk of its prompt: joining
requests ride in the same forward as the decoding ones), and after every step which go on.
The model runner (``runner.py``) owns the forward and the KV cache layout; the sampler
(``sampling.step``) is pure. Sequence slot i of the cache is position i of every per-sequence
list and tensor here.

Each request has a run (``methods.plan``) that decides, after every step, which of its
sequences go on, which branch into children (ivg: a child starts as a copy of its parent's
cache) and which fresh ones to prefill (aisp iterations). Sequences of one request with the
same prompt share one prefill: the others start as copies once it is done.

    batch = engine.open_batch()
    batch.add(requests)              # validated now; an idle batch runs their first step at once
    while not batch.done:
        for event in batch.emit():   # text for every sampled token; finished requests leave
            ...
        batch.add(more); batch.cancel(index)
        batch.advance()              # one forward for everyone (joining prompts included), then sample
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from personalize.decoding.config import GenerationRequest, StreamEvent
from personalize.decoding.head_set import AdapterGroup, HeadSet
from personalize.decoding.kv_cache import fill_holes
from personalize.decoding.layout import BatchLayout, build_layout
from personalize.decoding.requests import RequestBook, RequestStep, RewardFn, Validate
from personalize.decoding.runner import ModelRunner
from personalize.decoding.sampling import StepOutput
from personalize.decoding.sequences import SequenceOutput, SequenceSpec
from personalize.models import BaseModel


class BatchEngine(Protocol):
    """What a batch needs of its engine (``engine.Engine``): the parts, and the sampler's inputs."""

    base: BaseModel
    heads: HeadSet
    runner: ModelRunner
    prefill_chunk: int

    @property
    def validate(self) -> Validate: ...

    def reward_names(self) -> dict[str, str]: ...

    def sample(self, hidden: torch.Tensor, layout: BatchLayout, counters: torch.Tensor) -> StepOutput: ...

    def scores(self, hidden: torch.Tensor, layout: BatchLayout) -> torch.Tensor: ...


__all__ = ["DecodeBatch", "RewardFn", "SequenceOutput", "SequenceSpec"]


@dataclass
class _Slot:
    """Host state of one live sequence; its cache slot is its position in ``DecodeBatch._slots``."""

    number: int  # into the batch's outputs
    counter: int = 0  # tokens it sampled before its latest one: the counter of its random stream
    prefilled: bool = False  # its prompt is in the cache (fed by itself, or copied from the sequence that fed it)
    ready: bool = False  # its latest sampled token waits to be emitted (then fed)
    siblings: list[int] = field(default_factory=list)  # sequences that start as copies once its prompt is in


class DecodeBatch(RequestBook):
    """Requests decoded together by the local model; indices in events and results follow ``add`` calls."""

    def __init__(self, engine: BatchEngine, reward: RewardFn | None = None) -> None:
        super().__init__(engine.base, engine.heads, engine.runner, engine.validate, reward, engine.reward_names())
        self.engine = engine
        self._slots: list[_Slot] = []
        self._layout: BatchLayout | None = None  # None: rebuild before the next forward
        self._adapters: tuple[Mapping[str, AdapterGroup], ...] = ()  # the layout's rows' adapters, per layer
        self._sampled: StepOutput | None = None  # the last step's samples, per slot

    # ---- membership ------------------------------------------------------------------------
    @property
    def cache_length(self) -> int:
        """Positions the KV cache allocates per slot (0 when idle): at most the longest live sequence
        plus ``2 * kv_cache.BLOCK - 1``."""
        return self._cache.positions if self._slots else 0

    def add(self, requests: Sequence[GenerationRequest]) -> list[int]:
        """Queue requests to join; returns their indices. Raises (changing nothing) if one is invalid.

        An idle batch runs their first step at once; a running one feeds their prompts in its
        next forward, so their first tokens come out of the next ``emit``.
        """
        indices = self._enqueue(requests)
        if not self._slots:
            self._step()
        return indices

    def _admit(self) -> None:
        """Give every waiting sequence a slot; those sharing a request, prompt and heads with an
        admitted one wait as its siblings (they start as copies of it once its prompt is in)."""
        numbers = [n for n in self._joining if self.outputs[n].spec.request_index not in self._cancelled]
        self._joining = []
        runner_of: dict[tuple[int, tuple[int, ...], tuple[str, ...]], _Slot] = {}
        for number in numbers:
            spec = self.outputs[number].spec
            key = (spec.request_index, spec.prompt_ids, spec.heads)
            if key in runner_of:
                runner_of[key].siblings.append(number)
                continue
            adapters = [0] + [self.heads.lora_slot[n] for n in spec.heads if n in self.heads.lora_slot]
            self._cache.append(adapters)
            slot = _Slot(number)
            self._slots.append(slot)
            runner_of[key] = slot
            self._layout = None

    @property
    def done(self) -> bool:
        return not self._slots and not self._joining

    def close(self) -> None:
        self._slots = []
        self._sampled = None
        super().close()

    # ---- decoding --------------------------------------------------------------------------
    def advance(self) -> None:
        """One forward for every live sequence and every joining prompt, then sample (after ``emit``)."""
        if any(slot.ready for slot in self._slots):
            return  # the last samples were not emitted yet: nothing may be fed
        self._step()

    def _step(self) -> None:
        """Admit, feed, fork, sample: the sequences whose prompt is in get a new pending token."""
        self._admit()
        if not self._slots:
            return
        with torch.inference_mode():
            hidden = self._feed(self.engine.prefill_chunk)  # (R, H)
            layout = self._current_layout()
            counters = torch.tensor([s.counter for s in self._slots], dtype=torch.long, device=hidden.device)
            self._sampled = self.engine.sample(hidden, layout, counters)
        for slot in self._slots:
            slot.ready = slot.prefilled

    def _feed(self, budget: int) -> torch.Tensor:
        """One forward: decoding slots feed their pending token, prefilling ones their next prompt chunk
        (``budget`` prompt tokens in all, at least one sequence's worth of progress). Sequences whose
        prompt went in hand it to their siblings. Returns every row's final hidden state (R, H)."""
        self._current_layout()  # and the adapters its rows use
        if self._sampled is not None and all(slot.prefilled for slot in self._slots):  # the steady state
            for slot in self._slots:
                slot.counter += 1
            self._count_forwards([slot.number for slot in self._slots])
            ones = [1] * len(self._slots)
            return self.engine.runner.forward(self._cache, self._sampled.tokens, ones, self._adapters)
        counts: list[int] = []
        chunks: list[torch.Tensor] = []
        done: list[int] = []
        dev = self.base.device
        for pos, slot in enumerate(self._slots):
            if slot.prefilled:  # feed the token it sampled last (emitted since)
                assert self._sampled is not None
                chunks.append(self._sampled.tokens[pos : pos + 1])
                counts.append(1)
                slot.counter += 1
                continue
            out = self.outputs[slot.number]
            prompt = out.spec.prompt_ids
            take = min(len(prompt) - out.prompt_fed, budget)  # 0 once the step's prompt budget is spent
            budget -= take
            counts.append(take)
            if take:
                chunks.append(torch.tensor(prompt[out.prompt_fed : out.prompt_fed + take], device=dev))
            out.prompt_fed += take
            if out.prompt_fed == len(prompt):
                slot.prefilled = True
                done.append(pos)
        self._count_forwards([slot.number for slot, n in zip(self._slots, counts, strict=True) if n])
        token_ids = torch.cat(chunks) if len(chunks) > 1 else chunks[0]  # (N,)
        hidden = self.engine.runner.forward(self._cache, token_ids, counts, self._adapters)  # (R, H)
        return self._fork_siblings(hidden, done)

    def _fork_siblings(self, hidden: torch.Tensor, done: list[int]) -> torch.Tensor:
        """Siblings of the slots in ``done`` join as copies of them (cache and hidden states)."""
        before = len(self._slots)
        sources = list(range(before))
        for pos in done:
            slot = self._slots[pos]
            for number in slot.siblings:
                sources.append(pos)
                self._slots.append(_Slot(number, prefilled=True))
                self.outputs[number].free_steps = 1
            slot.siblings = []
        if len(sources) == before:
            return hidden
        rows = self._cache.select(sources)
        self._layout = None
        return hidden[torch.tensor(rows, dtype=torch.long, device=hidden.device)]  # (R', H)

    def _current_layout(self) -> BatchLayout:
        """The layout of the live slots (rebuilt after a membership change), and the adapters its rows use."""
        if self._layout is None:
            live = [slot.number for slot in self._slots]
            self._layout = build_layout(
                live,
                [self.outputs[n].spec for n in live],
                self._cache.row_sequence,
                self._cache.row_adapter,
                self.heads,
                self.base.hidden_size,
                self.base.device,
            )
            self._adapters = self.engine.runner.adapters(self.heads, self._layout.adapters)
        return self._layout

    def prefill_scores(self, requests: Sequence[GenerationRequest]) -> torch.Tensor:
        """Guided scores of every sequence's first token (S, V), computed from the prompts alone.

        Rows follow the order in which the requests' sequences were created."""
        self._enqueue(requests)
        try:
            self._admit()
            with torch.inference_mode():
                hidden = self._feed(budget=2**62)  # every prompt in one forward
                layout = self._current_layout()
                scores = self.engine.scores(hidden, layout)  # (S, V)
            order = sorted(range(len(self._slots)), key=lambda pos: self._slots[pos].number)
            return scores[torch.tensor(order, dtype=torch.long, device=scores.device)]
        finally:
            self.close()

    def emit(self) -> list[StreamEvent]:
        """Text for every pending token; runs decide what goes on; finished and cancelled sequences leave."""
        sampled = self._sampled
        cancelled = any(self.outputs[s.number].spec.request_index in self._cancelled for s in self._slots)
        if sampled is None or not (cancelled or any(slot.ready for slot in self._slots)):
            return []
        tokens = sampled.tokens.tolist()  # the one device sync per step (a few small transfers)
        logprobs = sampled.logprobs.tolist()
        values = sampled.values.tolist()
        tops = _tops(sampled)
        pushes: dict[int, dict[str, float]] = {}
        layout = self._current_layout()
        for (pos, objective), value in zip(layout.entry_owner, sampled.contributions.tolist(), strict=True):
            pushes.setdefault(pos, {})[objective] = value
        events: list[StreamEvent] = []
        steps: dict[int, RequestStep] = {}
        leaving: set[int] = set()
        for pos, slot in enumerate(self._slots):
            out = self.outputs[slot.number]
            index = out.spec.request_index
            if index in self._cancelled:
                leaving.add(pos)
                continue
            if not slot.ready:
                continue
            slot.ready = False
            out.value = values[pos]
            step = steps.setdefault(index, RequestStep())
            top = tops[pos][: out.spec.top_logprobs] if tops else ()
            event = self._record(slot.number, tokens[pos], logprobs[pos], pushes.get(pos, {}), top)
            if event is not None:
                events.append(event)
                if event.finish_reason is not None:
                    step.final_event = len(events) - 1
            if out.finish_reason is not None:
                leaving.add(pos)
                step.finished.append(slot.number)
            else:
                step.live.append(slot.number)
        position = {slot.number: pos for pos, slot in enumerate(self._slots)}
        branches = self._decide(steps, events, leaving, position)
        if leaving or branches:
            with torch.inference_mode():
                self._reorganize(leaving, branches)
        return events

    def _reorganize(self, leaving: set[int], branches: list[tuple[int, int]]) -> None:
        """Drop the ``leaving`` slots (the last ones move into the holes) and append each branch's
        child as a copy of its parent (cache, pending token, random stream)."""
        sources = fill_holes([pos not in leaving for pos in range(len(self._slots))])
        slots = [self._slots[src] for src in sources]
        for parent, child in branches:
            sources.append(parent)
            source = self._slots[parent]
            slots.append(_Slot(child, counter=source.counter, prefilled=True))
        self._cache.select(sources)
        self._cache.trim()
        self._slots = slots
        self._layout = None
        if self._sampled is not None and sources:
            picked = torch.tensor(sources, dtype=torch.long, device=self._sampled.tokens.device)
            self._sampled = StepOutput(
                self._sampled.tokens[picked],
                self._sampled.logprobs[picked],
                self._sampled.contributions.new_zeros(0),  # emitted already; the next step rewrites them
                self._sampled.values[picked],
            )


def _tops(sampled: StepOutput) -> list[tuple[tuple[int, float], ...]]:
    """Per slot, the most likely (token id, log-probability) pairs of the step (empty when none was asked)."""
    if sampled.top_ids is None or sampled.top_logprobs is None:
        return []
    ids, values = sampled.top_ids.tolist(), sampled.top_logprobs.tolist()
    return [tuple(zip(row_ids, row_values, strict=True)) for row_ids, row_values in zip(ids, values, strict=True)]
