"""The request side of a running batch: requests, their runs, their sequences' outputs and answers.

Whatever produces the tokens — the local decoder (``batch.DecodeBatch``) or a remote base model
steered here (``personalize.remote``) — a batch turns requests into sequences through their
method's run (``methods.plan``), records each sampled token into its sequence (text, stop strings,
end of sequence, token limit), lets the run decide what happens next, and answers with results
and costs. That part is this class; its subclasses decide how tokens are made.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch

from personalize.decoding import methods
from personalize.decoding.config import Compute, GenerationRequest, GenerationResult, StreamEvent, TokenLogprob
from personalize.decoding.head_set import HeadSet
from personalize.decoding.kv_cache import BatchCache
from personalize.decoding.runner import ModelRunner
from personalize.decoding.runs import Answer, RequestRun, RunContext
from personalize.decoding.sequences import SequenceOutput, SequenceSpec
from personalize.decoding.text import TextStream
from personalize.models import BaseModel

RewardFn = Callable[[Sequence[str], Sequence[str]], torch.Tensor]
Validate = Callable[..., None]


@dataclass
class RequestStep:
    """What one emit saw of one request: its sequences that go on, those that just ended, its final event."""

    live: list[int] = field(default_factory=list)
    finished: list[int] = field(default_factory=list)
    final_event: int | None = None  # position in the emitted events of its streamed last token


class RequestBook:
    """Requests decoded together; indices in events and results follow the order of ``add`` calls."""

    def __init__(
        self,
        base: BaseModel,
        heads: HeadSet,
        runner: ModelRunner,
        validate: Validate,
        reward: RewardFn | None = None,
        reward_names: Mapping[str, str] | None = None,
    ) -> None:
        self.base = base
        self._runner = runner
        self._cache: BatchCache = runner.new_cache(heads)  # the local model's KV cache of the live rows
        self.heads = heads  # fixed for the batch's life: head changes wait for it to drain
        self.reward = reward
        self._validate = validate
        self._reward_names = dict(reward_names or {})
        self.requests: list[GenerationRequest] = []
        self.runs: list[RequestRun] = []
        self.outputs: list[SequenceOutput] = []
        self._by_request: dict[int, list[int]] = {}  # every sequence a request ever decoded (compute)
        self._forwards: dict[int, int] = {}
        self._answers: dict[int, Answer] = {}
        self._cancelled: set[int] = set()
        self._eos = set(base.eos_token_ids)
        self._joining: list[int] = []  # sequence numbers waiting to start

    # ---- what subclasses provide -------------------------------------------------------------
    @property
    def done(self) -> bool:
        raise NotImplementedError

    def add(self, requests: Sequence[GenerationRequest]) -> list[int]:
        raise NotImplementedError

    def emit(self) -> list[StreamEvent]:
        raise NotImplementedError

    def advance(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Drop everything live (the batch can be reused); subclasses drop their own state first."""
        self._joining = []
        self._cache = self._runner.new_cache(self.heads)

    # ---- the local KV cache ----------------------------------------------------------------------
    @property
    def cache_tokens(self) -> int:
        """Positions the live slots hold (rows above the shared layers, sequences below)."""
        return self._cache.live_tokens

    @property
    def cache_bytes(self) -> int:
        """Bytes the KV cache allocates."""
        return self._cache.nbytes

    def _extra_compute(self, index: int) -> dict[str, int]:
        """Cost fields of request ``index`` beyond the local forward's (remote calls, for one)."""
        return {}

    # ---- requests ----------------------------------------------------------------------------
    @property
    def live_requests(self) -> int:
        """Requests still decoding (not answered, not cancelled; an aisp request between rounds included)."""
        return sum(1 for i in range(len(self.requests)) if i not in self._answers and i not in self._cancelled)

    def cancel(self, index: int) -> None:
        """Stop decoding request ``index`` (its client left); it emits nothing more."""
        self._cancelled.add(index)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Add ``requests``, decode until every one is done, and return their results in order."""
        for _ in self.run(requests):
            pass
        return self.results()

    def run(self, requests: Sequence[GenerationRequest]) -> Iterator[StreamEvent]:
        """Add ``requests`` and decode until every request is done."""
        try:
            self.add(requests)
            while not self.done:
                for event in self.emit():
                    if event.error is not None:
                        raise event.error
                    yield event
                self.advance()
        finally:
            self.close()

    def _enqueue(self, requests: Sequence[GenerationRequest]) -> list[int]:
        """Validate every request (raising changes nothing), plan its run, queue its first sequences."""
        for request in requests:
            self._validate(request, reward_given=self.reward is not None)
        context = RunContext(
            kinds={name: head.meta.kind for name, head in self.heads.heads.items()},
            rank=self._rank,
            hidden_size=self.base.hidden_size,
            device=self.base.device,
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
        """New sequences to start from their prompts."""
        for spec in specs:
            text = TextStream(self.base.tokenizer, spec.stop)
            self._joining.append(self._register(SequenceOutput(spec, text, rows=self.heads.rows_for(spec.heads))))

    def _register(self, output: SequenceOutput) -> int:
        number = len(self.outputs)
        self.outputs.append(output)
        self._by_request[output.spec.request_index].append(number)
        return number

    def _rank(self, request: GenerationRequest, texts: Sequence[str]) -> list[float]:
        return methods.rank_texts(request, texts, self.base, self.reward, self._reward_names)

    def _count_forwards(self, numbers: Sequence[int]) -> None:
        """Each request with a sequence (by number) in this forward took part in one more."""
        for index in {self.outputs[n].spec.request_index for n in numbers}:
            self._forwards[index] += 1

    # ---- after each step ---------------------------------------------------------------------
    def _record(
        self,
        number: int,
        token: int,
        logprob: float,
        pushes: dict[str, float],
        top: tuple[tuple[int, float], ...] = (),
    ) -> StreamEvent | None:
        """Add a sampled token to sequence ``number``; its event (None for methods that do not stream)."""
        out = self.outputs[number]
        out.steps += 1
        out.logprobs.append(logprob)
        out.top_logprobs.append(top)
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
        if not streams:
            return None
        return StreamEvent(
            index, token, delta, out.finish_reason, logprob, pushes, tokens=(TokenLogprob(token, logprob, top),)
        )

    def _decide(
        self, steps: dict[int, RequestStep], events: list[StreamEvent], leaving: set[int], position: Mapping[int, int]
    ) -> list[tuple[int, int]]:
        """Apply each stepped request's decision (``position``: sequence number -> its slot); adds the
        retired slots to ``leaving``; returns (parent slot, child number) of new branches."""
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
                tokens = tuple(map(TokenLogprob, out.token_ids, out.logprobs, out.top_logprobs))  # end token left out
                text = out.text.text
                events.append(StreamEvent(index, last, text, out.finish_reason, compute=compute, tokens=tokens))
        return branches

    def _compute(self, index: int) -> Compute:
        spent = [self.outputs[n] for n in self._by_request[index]]
        tokens = sum(o.rows * (o.prompt_fed + o.steps) for o in spent)
        return Compute(
            forwards=self._forwards[index],
            forward_rows=sum(o.rows * max(o.steps - o.free_steps, 0) for o in spent),
            processed_tokens=tokens,
            flops=2.0 * self.base.num_parameters * tokens,
            samples=len(spent),
            **self._extra_compute(index),
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
                    head_versions={name: self.heads.heads[name].meta.version for name in out.spec.heads},
                    compute=self._compute(index),
                    reward=answer.reward,
                    logprobs=tuple(out.logprobs),
                    top_logprobs=tuple(out.top_logprobs),
                    stop_token_id=out.stop_token_id,
                )
            )
        return results
