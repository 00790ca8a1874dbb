"""A running batch: requests join between steps, finished or cancelled ones leave at once.

State per live sequence (S of them, in row order): its attention mask (S, L), the
position of its last token (S, 1), the token sampled for it but not yet fed
(S,), and how many tokens it sampled so far (S,), the counter of its random
stream, so a request draws the same numbers whenever it joins. The KV cache
holds sequences in the shared lower layers and rows in the adapted ones.

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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from transformers import DynamicCache

from personalize.decoding import methods
from personalize.decoding.config import FinishReason, GenerationRequest, GenerationResult, StreamEvent
from personalize.decoding.text import TextStream

if TYPE_CHECKING:
    from personalize.decoding.engine import Engine, _Layout

RewardFn = Callable[[Sequence[str], Sequence[str]], torch.Tensor]


@dataclass(frozen=True)
class SequenceSpec:
    """One token stream to decode: a prompt, a seed and which heads steer it how strongly."""

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
    steer: tuple[tuple[str, float], ...]  # (objective, beta * weight), non-zero only


@dataclass
class SequenceOutput:
    """What one sequence produced, filled in as it decodes."""

    spec: SequenceSpec
    text: TextStream
    finish_reason: FinishReason | None = None
    rows: int = 1
    steps: int = 0

    @property
    def token_ids(self) -> list[int]:
        return self.text.token_ids


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
    )


class DecodeBatch:
    """Requests decoded together; indices in events and results follow the order of ``add`` calls."""

    def __init__(self, engine: Engine, reward: RewardFn | None = None) -> None:
        self.engine = engine
        self.reward = reward
        self.requests: list[GenerationRequest] = []
        self.outputs: list[SequenceOutput] = []
        self._by_request: dict[int, list[int]] = {}
        self._winners: dict[int, tuple[int, float | None]] = {}
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
        """Requests still decoding (not finished, not cancelled)."""
        if self._state is None:
            return 0
        return len({self.outputs[n].spec.request_index for n in self._state.layout.live})

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
            self.engine.validate(request)
        indices = []
        tokenizer = self.engine.base.tokenizer
        lora = self.engine._heads.lora_slot
        for request in requests:
            index = len(self.requests)
            self.requests.append(request)
            indices.append(index)
            seed = request.sampling.seed if request.sampling.seed is not None else secrets.randbits(62)
            for spec in methods.expand(index, request, seed):
                rows = 1 + sum(1 for name, _ in spec.steer if name in lora)
                self._joining.append(len(self.outputs))
                self._by_request.setdefault(index, []).append(len(self.outputs))
                self.outputs.append(SequenceOutput(spec, TextStream(tokenizer, spec.stop), rows=rows))
        return indices

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
    def _prefill(self, numbers: list[int]) -> tuple[_State, torch.Tensor]:
        """Run the prompts of sequences ``numbers``; sample their first tokens. Also returns hidden (R, H)."""
        engine = self.engine
        layout = engine._layout(self.outputs, numbers)
        prompts = [self.outputs[n].spec.prompt_ids for n in numbers]
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
        counters = torch.zeros(len(numbers), dtype=torch.long, device=dev)  # (S,)
        out = engine._next_tokens(hidden, layout, counters)
        state = _State(layout, cache, mask, positions[:, -1:], out.tokens, out.logprobs, out.contributions, counters)
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
        """Text for every pending token; finished and cancelled sequences leave the batch."""
        state = self._state
        if state is None:
            return []
        tokens = state.pending.tolist()  # the one device sync per step (three small transfers)
        logprobs = state.logprobs.tolist()
        pushes: dict[int, dict[str, float]] = {}
        for (pos, objective), value in zip(state.layout.entry_owner, state.contributions.tolist(), strict=True):
            pushes.setdefault(pos, {})[objective] = value
        events: list[StreamEvent] = []
        leaving: list[int] = []
        for pos, (number, token) in enumerate(zip(state.layout.live, tokens, strict=True)):
            out = self.outputs[number]
            if out.spec.request_index in self._cancelled:
                leaving.append(pos)
                continue
            event = self._advance(number, token, logprobs[pos], pushes.get(pos, {}))
            if event is not None:
                events.append(event)
            if out.finish_reason is not None:
                leaving.append(pos)
                events.extend(self._maybe_reduce(out.spec.request_index))
        if leaving:
            with torch.inference_mode():
                self._state = self._drop(state, leaving)
            if self._state is None:
                self.engine._select_rows(None)
        self._emitted = True
        return events

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
                    state.layout, state.cache, mask, positions, out.tokens, out.logprobs, out.contributions, counters
                )
            self._emitted = False
        if self._joining:
            self._join()

    def _drop(self, state: _State, leaving: list[int]) -> _State | None:
        gone = set(leaving)
        keep = [p for p in range(len(state.layout.live)) if p not in gone]
        if not keep:
            return None
        kept = torch.tensor(keep, device=state.mask.device)  # (S',)
        self.engine._prune(state.cache, kept, state.layout)
        layout = self.engine._layout(self.outputs, [state.layout.live[p] for p in keep])
        self.engine._select_rows(layout)
        entry_kept = torch.isin(state.layout.entries.sequence, kept)  # (M,) entries of the kept sequences
        return _State(
            layout,
            state.cache,
            state.mask[kept],
            state.positions[kept],
            state.pending[kept],
            state.logprobs[kept],
            state.contributions[entry_kept],
            state.counters[kept],
        )

    # ---- bookkeeping ------------------------------------------------------------------------
    def _advance(self, number: int, token: int, logprob: float, pushes: dict[str, float]) -> StreamEvent | None:
        out = self.outputs[number]
        out.steps += 1
        spec = out.spec
        index = spec.request_index
        streams = methods.streams(self.requests[index])
        if token in self._eos and not spec.ignore_eos:
            out.finish_reason = "stop"
            tail = out.text.finish()
            return StreamEvent(index, token, tail, "stop", logprob, pushes) if streams else None
        delta = out.text.push(token)
        if out.text.stopped:
            out.finish_reason = "stop"
        elif len(out.token_ids) >= spec.max_new_tokens:
            out.finish_reason = "length"
            delta += out.text.finish()
        return StreamEvent(index, token, delta, out.finish_reason, logprob, pushes) if streams else None

    def _maybe_reduce(self, index: int) -> Iterator[StreamEvent]:
        """When all sequences of a request are done, record its answer (and emit it if not streamed)."""
        numbers = self._by_request[index]
        if any(self.outputs[n].finish_reason is None for n in numbers) or index in self._winners:
            return
        request = self.requests[index]
        if methods.streams(request):
            self._winners[index] = (numbers[0], None)
            return
        texts = [self.outputs[n].text.text for n in numbers]
        winner, score = methods.reduce(request, texts, self.engine.base, self.reward)
        self._winners[index] = (numbers[winner], score)
        out = self.outputs[numbers[winner]]
        last = out.token_ids[-1] if out.token_ids else -1
        yield StreamEvent(index, last, out.text.text, out.finish_reason)

    def results(self) -> list[GenerationResult]:
        """Results of every request added, in order (all must have finished)."""
        results = []
        for index, request in enumerate(self.requests):
            number, score = self._winners[index]
            out = self.outputs[number]
            spent = [self.outputs[n] for n in self._by_request[index]]
            steered = [name for name, _ in out.spec.steer]
            assert out.finish_reason is not None
            results.append(
                GenerationResult(
                    token_ids=tuple(out.token_ids),
                    text=out.text.text,
                    finish_reason=out.finish_reason,
                    prompt_tokens=len(request.prompt_ids),
                    personalization=request.personalization,
                    head_versions=self.engine.head_versions(steered),
                    forward_rows=sum(o.rows * o.steps for o in spent),
                    processed_tokens=sum(o.rows * (len(o.spec.prompt_ids) + o.steps) for o in spent),
                    reward=score,
                )
            )
        return results
