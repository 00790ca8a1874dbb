"""A running batch: requests join between steps, finished or cancelled ones leave at once.

State per live sequence (S of them, in row order): its attention mask (S, L), the
position of its last token (S, 1), the token sampled for it but not yet fed
(S,), and how many tokens it sampled so far (S,), the counter of its random
stream, so a request draws the same numbers whenever it joins. The KV cache
holds sequences in the shared lower layers and rows in the adapted ones.

Each request has a run (``methods.plan``) that decides, after every step, which of
its sequences go on, which branch into children (ivg: the cache is reordered by
index, repeats allowed) and which fresh ones to prefill (aisp iterations).
Sequences of one request with the same prompt share one prefill forward.

    batch = engine.open_batch()
    batch.add(requests)              # validated now; prefilled now or after the next forward
    while not batch.done:
        for event in batch.emit():   # text for every pending token; finished requests leave
            ...
        batch.add(more); batch.cancel(index)
        batch.advance()              # one forward for everyone, then newcomers join
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from transformers import DynamicCache

from personalize.decoding import methods
from personalize.decoding.config import Compute, GenerationRequest, GenerationResult, StreamEvent
from personalize.decoding.runs import Answer, RequestRun, RunContext
from personalize.decoding.sequences import SequenceOutput, SequenceSpec
from personalize.decoding.text import TextStream

if TYPE_CHECKING:
    from personalize.decoding.engine import Engine, _Layout

RewardFn = Callable[[Sequence[str], Sequence[str]], torch.Tensor]
__all__ = ["DecodeBatch", "RewardFn", "SequenceOutput", "SequenceSpec"]


@dataclass
class _State:
    """Tensors of the live sequences (S of them, in row order)."""

    layout: _Layout
    cache: DynamicCache
    mask: torch.Tensor  # (S, L)
    positions: torch.Tensor  # (S, 1) position of the last fed token
    pending: torch.Tensor  # (S,) sampled, not yet fed
    logprobs: torch.Tensor  # (S,)
    contributions: torch.Tensor  # (M,) each value entry's push on the pending token
    counters: torch.Tensor  # (S,) tokens sampled before the pending one
    values: torch.Tensor  # (S,) chunk-level score of the pending token (ivg)


def _pad_left(tensor: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _merge(old: _State, new: _State, layout: _Layout) -> _State:
    """Append ``new``'s sequences after ``old``'s, left-padding the shorter history."""
    length = max(old.mask.shape[1], new.mask.shape[1])
    old_layers: list[Any] = list(old.cache.layers)
    new_layers: list[Any] = list(new.cache.layers)
    for a, b in zip(old_layers, new_layers, strict=True):
        # keys/values: (B, kv_heads, L, head_dim); padded slots are masked out
        a.keys = torch.cat([_pad_left(a.keys, length, 2), _pad_left(b.keys, length, 2)], dim=0)
        a.values = torch.cat([_pad_left(a.values, length, 2), _pad_left(b.values, length, 2)], dim=0)
    return _State(
        layout=layout,
        cache=old.cache,
        mask=torch.cat([_pad_left(old.mask, length, 1), _pad_left(new.mask, length, 1)]),  # (S, L)
        positions=torch.cat([old.positions, new.positions]),
        pending=torch.cat([old.pending, new.pending]),
        logprobs=torch.cat([old.logprobs, new.logprobs]),
        contributions=torch.cat([old.contributions, new.contributions]),
        counters=torch.cat([old.counters, new.counters]),
        values=torch.cat([old.values, new.values]),
    )


def _compact(state: _State) -> _State:
    """Crop the leading columns that no live sequence attends to any more (its rows left the batch).

    Positions are explicit and rotary embeddings were applied before caching, so dropping columns
    that are masked out for every row changes no result: only the padding a long-running batch
    would otherwise keep for as long as it runs.
    """
    used = state.mask.any(dim=0)  # (L,)
    first = int(used.to(torch.int8).argmax())  # first column some live sequence still attends to
    if first == 0:
        return state
    layers: list[Any] = list(state.cache.layers)
    for layer in layers:
        layer.keys = layer.keys[:, :, first:]  # (B, kv_heads, L', head_dim)
        layer.values = layer.values[:, :, first:]
    return replace(state, mask=state.mask[:, first:])  # (S, L')


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
        self.reward = reward
        self.requests: list[GenerationRequest] = []
        self.runs: list[RequestRun] = []
        self.outputs: list[SequenceOutput] = []
        self._by_request: dict[int, list[int]] = {}  # every sequence a request ever decoded (compute)
        self._forwards: dict[int, int] = {}
        self._answers: dict[int, Answer] = {}
        self._cancelled: set[int] = set()
        self._eos = set(engine.base.eos_token_ids)
        self._state: _State | None = None
        self._joining: list[int] = []  # sequence numbers waiting to be prefilled
        self._emitted = False  # the pending tokens were turned into events and may be fed

    # ---- membership ------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self._state is None and not self._joining

    @property
    def live_requests(self) -> int:
        """Requests still decoding (not answered, not cancelled; an aisp request between rounds included)."""
        return sum(1 for i in range(len(self.requests)) if i not in self._answers and i not in self._cancelled)

    @property
    def cache_length(self) -> int:
        """Positions the KV cache holds per row (0 when idle): at most the longest live sequence."""
        return 0 if self._state is None else int(self._state.mask.shape[1])

    def add(self, requests: Sequence[GenerationRequest]) -> list[int]:
        """Queue requests to join; returns their indices. Raises (changing nothing) if one is invalid.

        An idle batch prefills them at once; a running one after its next forward, so their
        first tokens come out of the next ``emit``.
        """
        indices = self._enqueue(requests)
        if self._state is None:
            self._join()
        return indices

    def _enqueue(self, requests: Sequence[GenerationRequest]) -> list[int]:
        for request in requests:
            self.engine.validate(request, reward_given=self.reward is not None)
        context = RunContext(
            kinds=self.engine.head_kinds(),
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
            output = SequenceOutput(spec, TextStream(tokenizer, spec.stop), rows=self.engine.rows_for(spec))
            self._joining.append(self._register(output))

    def _register(self, output: SequenceOutput) -> int:
        number = len(self.outputs)
        self.outputs.append(output)
        self._by_request[output.spec.request_index].append(number)
        return number

    def _rank(self, request: GenerationRequest, texts: Sequence[str]) -> list[float]:
        return methods.rank_texts(request, texts, self.engine.base, self.reward, self.engine.reward_names())

    def _join(self) -> None:
        """Prefill the waiting sequences and merge them after the live ones."""
        numbers = [n for n in self._joining if self.outputs[n].spec.request_index not in self._cancelled]
        self._joining = []
        if not numbers:
            return
        with torch.inference_mode():
            state, _ = self._prefill(numbers)
            if self._state is not None:
                live = self._state.layout.live + numbers
                state = _merge(self._state, state, self.engine._layout(self.outputs, live))
            self._state = state
            self.engine._select_rows(state.layout)

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
        self._state = None
        self._joining = []
        self.engine._select_rows(None)

    # ---- decoding --------------------------------------------------------------------------
    def _shared_prompts(self, numbers: list[int]) -> tuple[list[int], list[int]]:
        """Sequences that run their prompt (one per request, prompt and rows), and each sequence's runner."""
        runner_of: dict[tuple[int, tuple[int, ...], tuple[str, ...]], int] = {}
        runners: list[int] = []
        sources: list[int] = []
        for number in numbers:
            spec = self.outputs[number].spec
            key = (spec.request_index, spec.prompt_ids, spec.heads)
            if key not in runner_of:
                runner_of[key] = len(runners)
                runners.append(number)
            sources.append(runner_of[key])
        return runners, sources

    def _prefill(self, numbers: list[int]) -> tuple[_State, torch.Tensor]:
        """Run the prompts of sequences ``numbers``; sample their first tokens. Also returns hidden (R, H).

        Sequences of a request with the same prompt share one forward: its cache and hidden
        states are copied to the others by index.
        """
        engine = self.engine
        runners, sources = self._shared_prompts(numbers)
        layout = engine._layout(self.outputs, runners)
        prompts = [self.outputs[n].spec.prompt_ids for n in runners]
        length = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), length), engine.base.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), length), dtype=torch.long)
        for row, prompt in enumerate(prompts):  # left padding: every sequence ends at column L-1
            ids[row, length - len(prompt) :] = torch.tensor(prompt)
            mask[row, length - len(prompt) :] = 1
        dev = engine.base.device
        ids, mask = ids.to(dev), mask.to(dev)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)  # (S, L)
        cache = DynamicCache()
        engine._select_rows(layout)
        hidden = engine._forward(ids, mask, positions, cache, layout)  # (R, H)
        for number, prompt in zip(runners, prompts, strict=True):
            self.outputs[number].prompt_fed = len(prompt)
        if len(runners) < len(numbers):
            rows = engine._reorder(cache, sources, layout)  # (R',): fan the prompt out to its sequences
            picked = torch.tensor(sources, dtype=torch.long, device=dev)  # (S',)
            hidden, mask, positions = hidden[rows], mask[picked], positions[picked]  # (R', H), (S', L), (S', L)
            layout = engine._layout(self.outputs, numbers)
            engine._select_rows(layout)
            for number in set(numbers) - set(runners):
                self.outputs[number].free_steps = 1
        counters = torch.zeros(len(numbers), dtype=torch.long, device=dev)  # (S,)
        out = engine._next_tokens(hidden, layout, counters)
        state = _State(
            layout, cache, mask, positions[:, -1:], out.tokens, out.logprobs, out.contributions, counters, out.values
        )
        return state, hidden

    def prefill_scores(self, requests: Sequence[GenerationRequest]) -> torch.Tensor:
        """Guided scores of every sequence's first token (S, V), computed from the prompts alone."""
        self._enqueue(requests)
        try:
            with torch.inference_mode():
                state, hidden = self._prefill(self._joining)
                return self.engine._scores(hidden, state.layout)
        finally:
            self.close()

    def emit(self) -> list[StreamEvent]:
        """Text for every pending token; runs decide what goes on; finished and cancelled sequences leave."""
        state = self._state
        if state is None:
            return []
        tokens = state.pending.tolist()  # the one device sync per step (four small transfers)
        logprobs = state.logprobs.tolist()
        values = state.values.tolist()
        pushes: dict[int, dict[str, float]] = {}
        for (pos, objective), value in zip(state.layout.entry_owner, state.contributions.tolist(), strict=True):
            pushes.setdefault(pos, {})[objective] = value
        events: list[StreamEvent] = []
        steps: dict[int, _RequestStep] = {}
        leaving: set[int] = set()
        for pos, (number, token) in enumerate(zip(state.layout.live, tokens, strict=True)):
            out = self.outputs[number]
            index = out.spec.request_index
            if index in self._cancelled:
                leaving.add(pos)
                continue
            out.value = values[pos]
            step = steps.setdefault(index, _RequestStep())
            event = self._advance(number, token, logprobs[pos], pushes.get(pos, {}))
            if event is not None:
                events.append(event)
                if event.finish_reason is not None:
                    step.final_event = len(events) - 1
            if out.finish_reason is not None:
                leaving.add(pos)
                step.finished.append(number)
            else:
                step.live.append(number)
        branches = self._decide(steps, events, leaving)
        if leaving or branches:
            with torch.inference_mode():
                reordered = self._reorder(state, leaving, branches)
                self._state = _compact(reordered) if leaving and reordered is not None else reordered
            if self._state is None:
                self.engine._select_rows(None)
        self._emitted = True
        return events

    def _decide(
        self, steps: dict[int, _RequestStep], events: list[StreamEvent], leaving: set[int]
    ) -> list[tuple[int, int]]:
        """Apply each stepped request's decision; returns (parent position, child number) of new branches."""
        assert self._state is not None
        position = {number: pos for pos, number in enumerate(self._state.layout.live)}
        branches: list[tuple[int, int]] = []
        for index, step in steps.items():
            self._forwards[index] += 1
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

    def advance(self) -> None:
        """One forward for every live sequence (feeding its emitted token), then let newcomers join."""
        state = self._state
        if state is not None and self._emitted:
            with torch.inference_mode():
                mask = torch.cat([state.mask, state.mask.new_ones(state.mask.shape[0], 1)], dim=1)  # (S, L+1)
                positions = state.positions + 1  # (S, 1)
                hidden = self.engine._forward(state.pending.unsqueeze(-1), mask, positions, state.cache, state.layout)
                counters = state.counters + 1  # (S,)
                out = self.engine._next_tokens(hidden, state.layout, counters)
                self._state = _State(
                    state.layout,
                    state.cache,
                    mask,
                    positions,
                    out.tokens,
                    out.logprobs,
                    out.contributions,
                    counters,
                    out.values,
                )
            self._emitted = False
        if self._joining:
            self._join()

    def _reorder(self, state: _State, leaving: set[int], branches: list[tuple[int, int]]) -> _State | None:
        """Drop the ``leaving`` positions and append each branch's child as a copy of its parent."""
        keep = [p for p in range(len(state.layout.live)) if p not in leaving]
        sources = keep + [parent for parent, _ in branches]
        live = [state.layout.live[p] for p in keep] + [child for _, child in branches]
        if not live:
            return None
        self.engine._reorder(state.cache, sources, state.layout)
        layout = self.engine._layout(self.outputs, live)
        self.engine._select_rows(layout)
        picked = torch.tensor(sources, dtype=torch.long, device=state.mask.device)  # (S',)
        return _State(
            layout,
            state.cache,
            state.mask[picked],
            state.positions[picked],
            state.pending[picked],
            state.logprobs[picked],
            state.contributions.new_zeros(len(layout.entry_owner)),  # already emitted; the next step rewrites them
            state.counters[picked],
            state.values[picked],
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
