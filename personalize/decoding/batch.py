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

import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch

from personalize.decoding import methods
from personalize.decoding.config import Compute, GenerationRequest, GenerationResult, StreamEvent
from personalize.decoding.head_set import AdapterGroup
from personalize.decoding.kv_cache import BatchCache, fill_holes
from personalize.decoding.layout import BatchLayout, build_layout
from personalize.decoding.runs import Answer, RequestRun, RunContext
from personalize.decoding.sampling import StepOutput
from personalize.decoding.sequences import SequenceOutput, SequenceSpec
from personalize.decoding.text import TextStream

if TYPE_CHECKING:
    from personalize.decoding.engine import Engine

RewardFn = Callable[[Sequence[str], Sequence[str]], torch.Tensor]
__all__ = ["DecodeBatch", "RewardFn", "SequenceOutput", "SequenceSpec"]


@dataclass
class _Slot:
    """Host state of one live sequence; its cache slot is its position in ``DecodeBatch._slots``."""

    number: int  # into the batch's outputs
    counter: int = 0  # tokens it sampled before its latest one: the counter of its random stream
    prefilled: bool = False  # its prompt is in the cache (fed by itself, or copied from the sequence that fed it)
    ready: bool = False  # its latest sampled token waits to be emitted (then fed)
    siblings: list[int] = field(default_factory=list)  # sequences that start as copies once its prompt is in


@dataclass
class _RequestStep:
    """What one emit saw of one request: its sequences that go on, those that just ended, its final event."""

    live: list[int] = field(default_factory=list)
    finished: list[int] = field(default_factory=list)
    final_event: int | None = None  # position in the emitted events of its streamed last token


class DecodeBatch:
    """Requests decoded together; indices in events and results follow the order of ``add`` calls."""

    def __init__(self, engine: Engine, reward: RewardFn | None = None) -> None:
        self.engine = engine
        self.heads = engine.heads  # fixed for the batch's life: head changes wait for it to drain
        self.reward = reward
        self.requests: list[GenerationRequest] = []
        self.runs: list[RequestRun] = []
        self.outputs: list[SequenceOutput] = []
        self._by_request: dict[int, list[int]] = {}  # every sequence a request ever decoded (compute)
        self._forwards: dict[int, int] = {}
        self._answers: dict[int, Answer] = {}
        self._cancelled: set[int] = set()
        self._eos = set(engine.base.eos_token_ids)
        self._cache: BatchCache = engine.runner.new_cache(self.heads)
        self._slots: list[_Slot] = []
        self._layout: BatchLayout | None = None  # None: rebuild before the next forward
        self._adapters: tuple[Mapping[str, AdapterGroup], ...] = ()  # the layout's rows' adapters, per layer
        self._sampled: StepOutput | None = None  # the last step's samples, per slot
        self._joining: list[int] = []  # sequence numbers waiting for a slot

    # ---- membership ------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return not self._slots and not self._joining

    @property
    def live_requests(self) -> int:
        """Requests still decoding (not answered, not cancelled; an aisp request between rounds included)."""
        return sum(1 for i in range(len(self.requests)) if i not in self._answers and i not in self._cancelled)

    @property
    def cache_length(self) -> int:
        """Positions the KV cache allocates per slot (0 when idle): at most the longest live sequence
        plus ``2 * kv_cache.BLOCK - 1``."""
        return self._cache.positions if self._slots else 0

    @property
    def cache_tokens(self) -> int:
        """Positions the live slots hold (rows above the shared layers, sequences below)."""
        return self._cache.live_tokens

    @property
    def cache_bytes(self) -> int:
        """Bytes the KV cache allocates."""
        return self._cache.nbytes

    def add(self, requests: Sequence[GenerationRequest]) -> list[int]:
        """Queue requests to join; returns their indices. Raises (changing nothing) if one is invalid.

        An idle batch runs their first step at once; a running one feeds their prompts in its
        next forward, so their first tokens come out of the next ``emit``.
        """
        indices = self._enqueue(requests)
        if not self._slots:
            self._step()
        return indices

    def _enqueue(self, requests: Sequence[GenerationRequest]) -> list[int]:
        for request in requests:
            self.engine.validate(request, reward_given=self.reward is not None)
        context = RunContext(
            kinds={name: head.meta.kind for name, head in self.heads.heads.items()},
            rank=self._rank,
            hidden_size=self.engine.base.hidden_size,
            device=self.engine.base.device,
        )
        indices = []
        for request in requests:
            index = len(self.requests)
            self.requests.append(request)
            indices.append(index)
            seed = request.sampling.seed if request.sampling.seed is not None else secrets.randbits(62)
            run = methods.plan(index, request, seed, context)
            self.runs.append(run)
            self._by_request[index] = []
            self._forwards[index] = 0
            self._queue(run.start())
        return indices

    def _queue(self, specs: Sequence[SequenceSpec]) -> None:
        """New sequences to prefill from their prompts."""
        tokenizer = self.engine.base.tokenizer
        for spec in specs:
            output = SequenceOutput(spec, TextStream(tokenizer, spec.stop), rows=self.heads.rows_for(spec.heads))
            self._joining.append(self._register(output))

    def _register(self, output: SequenceOutput) -> int:
        number = len(self.outputs)
        self.outputs.append(output)
        self._by_request[output.spec.request_index].append(number)
        return number

    def _rank(self, request: GenerationRequest, texts: Sequence[str]) -> list[float]:
        return methods.rank_texts(request, texts, self.engine.base, self.reward, self.engine.reward_names())

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

    def cancel(self, index: int) -> None:
        """Stop decoding request ``index`` (its client left); it emits nothing more."""
        self._cancelled.add(index)

    def run(self, requests: Sequence[GenerationRequest]) -> Iterator[StreamEvent]:
        """Add ``requests`` and decode until every request is done."""
        try:
            self.add(requests)
            while not self.done:
                yield from self.emit()
                self.advance()
        finally:
            self.close()

    def close(self) -> None:
        self._slots = []
        self._joining = []
        self._sampled = None
        self._cache = self.engine.runner.new_cache(self.heads)

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
            self._count_forwards(self._slots)
            ones = [1] * len(self._slots)
            return self.engine.runner.forward(self._cache, self._sampled.tokens, ones, self._adapters)
        counts: list[int] = []
        chunks: list[torch.Tensor] = []
        done: list[int] = []
        dev = self.engine.base.device
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
        self._count_forwards([slot for slot, n in zip(self._slots, counts, strict=True) if n])
        token_ids = torch.cat(chunks) if len(chunks) > 1 else chunks[0]  # (N,)
        hidden = self.engine.runner.forward(self._cache, token_ids, counts, self._adapters)  # (R, H)
        return self._fork_siblings(hidden, done)

    def _count_forwards(self, fed: Sequence[_Slot]) -> None:
        """Each request with a sequence in this forward took part in one more."""
        for index in {self.outputs[slot.number].spec.request_index for slot in fed}:
            self._forwards[index] += 1

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
                self.engine.base.hidden_size,
                self.engine.base.device,
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
        tokens = sampled.tokens.tolist()  # the one device sync per step (four small transfers)
        logprobs = sampled.logprobs.tolist()
        values = sampled.values.tolist()
        pushes: dict[int, dict[str, float]] = {}
        layout = self._current_layout()
        for (pos, objective), value in zip(layout.entry_owner, sampled.contributions.tolist(), strict=True):
            pushes.setdefault(pos, {})[objective] = value
        events: list[StreamEvent] = []
        steps: dict[int, _RequestStep] = {}
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
            step = steps.setdefault(index, _RequestStep())
            event = self._advance(slot.number, tokens[pos], logprobs[pos], pushes.get(pos, {}))
            if event is not None:
                events.append(event)
                if event.finish_reason is not None:
                    step.final_event = len(events) - 1
            if out.finish_reason is not None:
                leaving.add(pos)
                step.finished.append(slot.number)
            else:
                step.live.append(slot.number)
        branches = self._decide(steps, events, leaving)
        if leaving or branches:
            with torch.inference_mode():
                self._reorganize(leaving, branches)
        return events

    def _decide(
        self, steps: dict[int, _RequestStep], events: list[StreamEvent], leaving: set[int]
    ) -> list[tuple[int, int]]:
        """Apply each stepped request's decision; returns (parent position, child number) of new branches."""
        position = {slot.number: pos for pos, slot in enumerate(self._slots)}
        branches: list[tuple[int, int]] = []
        for index, step in steps.items():
            decision = self.runs[index].update(self.outputs, step.live, step.finished)
            leaving.update(position[n] for n in decision.retire)
            for parent, spec in decision.branch:
                branches.append((position[parent], self._register(self.outputs[parent].fork(spec))))
            self._queue(decision.spawn)
            if decision.answer is None:
                continue
            self._answers[index] = decision.answer
            compute = self._compute(index)
            if step.final_event is not None:  # streamed: the last token's event carries the cost
                events[step.final_event] = replace(events[step.final_event], compute=compute)
            elif not self.runs[index].streams:  # one event carries the whole answer
                out = self.outputs[decision.answer.number]
                last = out.token_ids[-1] if out.token_ids else -1
                events.append(StreamEvent(index, last, out.text.text, out.finish_reason, compute=compute))
        return branches

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

    # ---- bookkeeping ------------------------------------------------------------------------
    def _advance(self, number: int, token: int, logprob: float, pushes: dict[str, float]) -> StreamEvent | None:
        out = self.outputs[number]
        out.steps += 1
        out.logprobs.append(logprob)
        spec = out.spec
        index = spec.request_index
        streams = self.runs[index].streams
        if token in self._eos and not spec.ignore_eos:
            out.finish_reason = "stop"
            out.stop_token_id = token
            tail = out.text.finish()
            return StreamEvent(index, token, tail, "stop", logprob, pushes) if streams else None
        delta = out.text.push(token)
        if out.text.stopped:
            out.finish_reason = "stop"
        elif len(out.token_ids) >= spec.max_new_tokens:
            out.finish_reason = "length"
            delta += out.text.finish()
        return StreamEvent(index, token, delta, out.finish_reason, logprob, pushes) if streams else None

    def _compute(self, index: int) -> Compute:
        spent = [self.outputs[n] for n in self._by_request[index]]
        tokens = sum(o.rows * (o.prompt_fed + o.steps) for o in spent)
        return Compute(
            forwards=self._forwards[index],
            forward_rows=sum(o.rows * max(o.steps - o.free_steps, 0) for o in spent),
            processed_tokens=tokens,
            flops=2.0 * self.engine.base.num_parameters * tokens,
            samples=len(spent),
        )

    def results(self) -> list[GenerationResult]:
        """Results of every request added, in order (all must have finished)."""
        results = []
        for index, request in enumerate(self.requests):
            answer = self._answers[index]
            out = self.outputs[answer.number]
            assert out.finish_reason is not None
            results.append(
                GenerationResult(
                    token_ids=tuple(out.token_ids),
                    text=out.text.text,
                    finish_reason=out.finish_reason,
                    prompt_tokens=len(request.prompt_ids),
                    personalization=request.personalization,
                    head_versions=self.engine.head_versions(out.spec.heads),
                    compute=self._compute(index),
                    reward=answer.reward,
                    logprobs=tuple(out.logprobs),
                    stop_token_id=out.stop_token_id,
                )
            )
        return results
