"""A running batch whose tokens come from a remote base model, steered here by speculative sampling.

Each sequence (one for ``base``/``vas``, N for ``bon``) keeps its ``history`` (prompt + accepted
tokens: what the upstream continues) and, when value heads steer it, a slot in the local
backbone's KV cache holding ``history[:-1]``. Every ``advance``:

1. sequences without a call in flight ask the upstream for a chunk of L tokens (a thread pool:
   many calls in flight at once);
2. one local forward feeds every steered sequence what it needs: a new prompt (prefill), and for
   each returned chunk its history's last token plus the chunk's first L-1 tokens — the hidden
   states that score the chunk's L positions, all heads' rows batched;
3. the acceptance test (``speculative.verify``) keeps each chunk up to its first rejection, puts
   the residual's draw in its place, and cuts the local cache back to what was accepted;
4. the next chunk is asked for at once.

Sequences no head steers (``base``, ``bon`` samples) take the upstream's tokens as they are: no
local work. Accepted tokens come out of ``emit`` as they were accepted.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from personalize.decoding.config import Compute, GenerationRequest, StreamEvent
from personalize.decoding.engine import Engine
from personalize.decoding.head_set import AdapterGroup
from personalize.decoding.kv_cache import fill_holes
from personalize.decoding.requests import RequestBook, RequestStep, RewardFn
from personalize.decoding.rng import derive_seed, uniforms
from personalize.decoding.sampling import ValueEntries, candidate_bonus
from personalize.remote.speculative import Verdicts, chunk_length, first_rejections, verify
from personalize.remote.upstream import ChunkRequest, Proposal, Upstream


class RemoteSide(Protocol):
    """What a remote batch needs of its engine (``engine.RemoteEngine``)."""

    @property
    def local(self) -> Engine: ...

    @property
    def upstream(self) -> Upstream: ...

    @property
    def pool(self) -> cf.Executor: ...

    def validate(self, request: GenerationRequest, *, reward_given: bool = False) -> None: ...


ACCEPTANCE_PRIOR = 0.75
"""Acceptance assumed before a sequence has seen any (first chunk: 5 tokens at the default rule)."""
ACCEPTANCE_MEMORY = 0.8
"""Weight of the past in the moving average of per-position acceptance."""
PASS_THROUGH_CHUNK = 64
"""Tokens per upstream call for sequences no head steers (nothing to verify: fewer, longer calls)."""


Top = tuple[tuple[int, float], ...]
Accepted = tuple[int, float, dict[str, float], Top]
"""An accepted token: id, log-probability, each objective's push on it, the most likely alternatives."""


@dataclass
class _Seq:
    """One live sequence of the remote batch."""

    number: int
    history: list[int]  # prompt + accepted tokens
    steered: bool  # value heads score its chunks (it has a local cache slot)
    seed: int
    acceptance: float = ACCEPTANCE_PRIOR
    call: cf.Future[Proposal | None] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    proposal: Proposal | None = None
    accepted: list[Accepted] = field(default_factory=list)  # to emit
    ended: bool = False  # its last accepted token ends it (EOS or the token limit): no more calls


@dataclass
class _Counts:
    calls: int = 0
    proposed: int = 0
    accepted: int = 0
    local_tokens: int = 0  # tokens its rows pushed through the local backbone (prefill and chunks)


class RemoteBatch(RequestBook):
    """Requests decoded by a remote base model; the RunningBatch the scheduler drives."""

    def __init__(self, engine: RemoteSide, reward: RewardFn | None = None) -> None:
        local = engine.local
        super().__init__(local.base, local.heads, local.runner, engine.validate, reward, local.reward_names())
        self.engine = engine
        self._embedding = local.base.model.get_output_embeddings().weight  # (V, H) frozen: head values
        self._adapters: tuple[Mapping[str, AdapterGroup], ...] = ()
        self._seqs: dict[int, _Seq] = {}  # live sequences by number
        self._slots: list[int] = []  # steered sequences in local cache slot order
        self._counts: dict[int, _Counts] = {}  # by sequence number, kept after it leaves
        self._failed: dict[int, Exception] = {}  # request index -> why it failed (reported once)

    # ---- RunningBatch ------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return not self._seqs and not self._joining and not self._failed

    def add(self, requests: Sequence[GenerationRequest]) -> list[int]:
        indices = self._enqueue(requests)
        self._admit()
        return indices

    def close(self) -> None:
        for seq in self._seqs.values():
            seq.cancel.set()
        self._seqs, self._slots = {}, []
        super().close()

    def advance(self) -> None:
        """Admit, call the upstream, wait for a chunk if nothing else is to do, score, accept."""
        self._admit()
        self._launch()
        if not any(s.accepted for s in self._seqs.values()) and not self._prefill_due():
            self._collect(wait=True)
        else:
            self._collect(wait=False)
        steered = [self._seqs[n] for n in self._slots]
        if self._prefill_due() or any(s.proposal is not None for s in steered):
            with torch.inference_mode():
                self._score()
        for seq in self._seqs.values():
            if not seq.steered and seq.proposal is not None:
                self._pass_through(seq)
        self._launch()

    def emit(self) -> list[StreamEvent]:
        events: list[StreamEvent] = [StreamEvent(i, -1, "", error=e) for i, e in self._failed.items()]
        self._failed = {}
        steps: dict[int, RequestStep] = {}
        leaving: set[int] = set()
        for number, seq in list(self._seqs.items()):
            out = self.outputs[number]
            index = out.spec.request_index
            if index in self._cancelled:
                leaving.add(number)
                continue
            if not seq.accepted:
                continue
            step = steps.setdefault(index, RequestStep())
            for token, logprob, pushes, top in seq.accepted:
                event = self._record(number, token, logprob, pushes, top)
                if event is not None:
                    events.append(event)
                    if event.finish_reason is not None:
                        step.final_event = len(events) - 1
                if out.finish_reason is not None:
                    break  # a stop string, the end token or the limit: the rest is dropped
            seq.accepted = []
            if out.finish_reason is not None:
                leaving.add(number)
                step.finished.append(number)
            else:
                step.live.append(number)
        self._decide(steps, events, leaving, {n: n for n in self._seqs})
        self._leave(leaving)
        return events

    # ---- membership --------------------------------------------------------------------------
    def _admit(self) -> None:
        for number in self._joining:
            out = self.outputs[number]
            if out.spec.request_index in self._cancelled:
                continue
            steered = bool(out.spec.steer)
            seq = _Seq(number, list(out.spec.prompt_ids), steered, out.spec.seed)
            self._seqs[number] = seq
            self._counts[number] = _Counts()
            if steered:
                adapters = [0] + [self.heads.lora_slot[n] for n in out.spec.heads if n in self.heads.lora_slot]
                self._cache.append(adapters)
                self._slots.append(number)
        if self._joining:
            self._refresh_adapters()
        self._joining = []

    def _leave(self, numbers: set[int]) -> None:
        """Drop sequences: cancel their calls (the upstream request is aborted), free their slots."""
        if not numbers:
            return
        for number in numbers:
            seq = self._seqs.pop(number, None)
            if seq is not None:
                seq.cancel.set()
        alive = [n not in numbers for n in self._slots]
        if not all(alive):
            sources = fill_holes(alive)
            with torch.inference_mode():  # the cache's tensors are inference tensors
                self._cache.select(sources)
                self._cache.trim()
            self._slots = [self._slots[s] for s in sources]
            self._refresh_adapters()

    def _refresh_adapters(self) -> None:
        used = sorted({a for a in self._cache.row_adapter if a > 0})
        self._adapters = self._runner.adapters(self.heads, used)

    def _fail(self, number: int, exc: Exception) -> None:
        """The request of sequence ``number`` failed: all its sequences leave, its client gets ``exc``."""
        index = self.outputs[number].spec.request_index
        self._failed[index] = exc
        self._cancelled.add(index)
        self._leave({n for n in self._seqs if self.outputs[n].spec.request_index == index})

    # ---- upstream ----------------------------------------------------------------------------
    def _launch(self) -> None:
        """Ask for the next chunk of every sequence that has none coming and is not at its end."""
        for number, seq in self._seqs.items():
            if seq.call is not None or seq.proposal is not None or seq.ended:
                continue
            out = self.outputs[number]
            left = out.spec.max_new_tokens - (len(seq.history) - len(out.spec.prompt_ids))
            if left <= 0:
                continue
            chunk = self.requests[out.spec.request_index].personalization.chunk_tokens
            size = chunk or (chunk_length(seq.acceptance) if seq.steered else PASS_THROUGH_CHUNK)
            generated = len(seq.history) - len(out.spec.prompt_ids)
            request = ChunkRequest(
                prompt_ids=tuple(seq.history),
                max_tokens=min(size, left),
                temperature=out.spec.temperature,
                seed=derive_seed(seq.seed, generated) % 2**31,
                ignore_eos=out.spec.ignore_eos,
            )
            seq.call = self.engine.pool.submit(self.engine.upstream.propose, request, seq.cancel)
            self._counts[number].calls += 1

    def _collect(self, *, wait: bool) -> None:
        """Move finished calls to proposals (waiting briefly for one if ``wait``); failures fail their request."""
        calls = {seq.call: number for number, seq in self._seqs.items() if seq.call is not None}
        if wait and calls:
            cf.wait(list(calls), timeout=0.05, return_when=cf.FIRST_COMPLETED)
        for call, number in calls.items():
            if not call.done() or number not in self._seqs:
                continue
            seq = self._seqs[number]
            seq.call = None
            try:
                seq.proposal = call.result()
            except Exception as exc:  # an upstream failure ends its own request only
                self._fail(number, exc)
                continue
            if seq.proposal is not None:
                self._counts[number].proposed += len(seq.proposal.tokens)

    def _pass_through(self, seq: _Seq) -> None:
        """Take an unsteered chunk as it is (its log-probabilities are q's: what was sampled from)."""
        proposal = seq.proposal
        assert proposal is not None
        seq.proposal = None
        spec = self.outputs[seq.number].spec
        tau = spec.temperature if spec.temperature > 0 else 1.0  # greedy reports temperature 1
        log_q = torch.log_softmax(proposal.top_logprobs / tau, dim=-1)  # (L, C)
        hit = proposal.top_ids == torch.tensor(proposal.tokens).unsqueeze(-1)  # (L, C)
        logprobs = (log_q.nan_to_num(neginf=0.0) * hit).sum(-1).tolist()
        tops = _tops(log_q, proposal.top_ids, spec.top_logprobs)
        self._take(seq, [(t, lp, {}, top) for t, lp, top in zip(proposal.tokens, logprobs, tops, strict=True)])
        self._counts[seq.number].accepted += len(proposal.tokens)

    def _take(self, seq: _Seq, tokens: list[Accepted]) -> None:
        """Accept ``tokens`` into a sequence's history (up to its end token or its token limit)."""
        out = self.outputs[seq.number]
        eos = set(self.base.eos_token_ids) if not out.spec.ignore_eos else set()
        limit = out.spec.max_new_tokens - (len(seq.history) - len(out.spec.prompt_ids))
        for entry in tokens[:limit]:
            token = entry[0]
            seq.history.append(token)
            seq.accepted.append(entry)
            if token in eos:
                seq.ended = True
                break
        if len(seq.history) - len(out.spec.prompt_ids) >= out.spec.max_new_tokens:
            seq.ended = True

    # ---- local scoring -----------------------------------------------------------------------
    def _prefill_due(self) -> bool:
        return any(self._cache.lengths[s] < len(self._seqs[n].history) - 1 for s, n in enumerate(self._slots))

    def _score(self) -> None:
        """One local forward: prompts in, chunks scored, accepted, the cache cut back."""
        counts, ids, chunks = [], [], []  # chunks: (slot, L) of every scored sequence, in slot order
        for slot, number in enumerate(self._slots):
            seq = self._seqs[number]
            fed = self._cache.lengths[slot]
            run = seq.history[fed:] + list(seq.proposal.tokens[:-1]) if seq.proposal else seq.history[fed:-1]
            if seq.proposal is not None:
                chunks.append((slot, len(seq.proposal.tokens)))
            counts.append(len(run))
            ids.extend(run)
            self._counts[number].local_tokens += len(run) * self.heads.rows_for(self.outputs[number].spec.heads)
        self._count_forwards([n for n, c in zip(self._slots, counts, strict=True) if c])
        token_ids = torch.tensor(ids, dtype=torch.long, device=self.base.device)
        hidden, row_counts = self._runner.forward_all(self._cache, token_ids, counts, self._adapters)  # (N_r, H)
        if chunks:
            self._verify(hidden, row_counts, counts, chunks)

    def _verify(
        self, hidden: torch.Tensor, row_counts: list[int], counts: list[int], chunks: list[tuple[int, int]]
    ) -> None:
        """The acceptance test over every scored position; each sequence keeps its accepted prefix."""
        proposals = [self._seqs[self._slots[slot]].proposal for slot, _ in chunks]
        assert all(p is not None for p in proposals)
        top_ids = torch.cat([p.top_ids for p in proposals if p is not None]).to(self.base.device)  # (P, C)
        top_lp = torch.cat([p.top_logprobs for p in proposals if p is not None]).to(self.base.device)  # (P, C)
        proposed = torch.tensor([t for p in proposals if p is not None for t in p.tokens], device=self.base.device)
        entries, owners, remaining, temperature, counters, seeds = self._positions(row_counts, counts, chunks)
        stack = self.heads.stack
        valid = torch.isfinite(top_lp)
        bonus = torch.zeros_like(top_lp)  # (P, C)
        pushes = torch.zeros(0)
        if stack is not None and not entries.empty:
            per_entry = candidate_bonus(top_ids, top_lp, valid, hidden, self._embedding, stack, entries, remaining)
            bonus = bonus.index_add(0, entries.sequence, per_entry)  # (P, C)
            pushes = per_entry
        u_accept = uniforms(seeds[0], counters)  # (P,)
        u_residual = uniforms(seeds[1], counters)
        verdicts = verify(top_ids, top_lp, proposed, bonus, temperature, u_accept, u_residual)
        objective_pushes = self._pushes(
            pushes, entries, owners, top_ids, proposed, verdicts.replacement, int(proposed.shape[0])
        )
        self._apply(chunks, verdicts, objective_pushes, top_ids)

    def _positions(
        self, row_counts: list[int], counts: list[int], chunks: list[tuple[int, int]]
    ) -> tuple[ValueEntries, list[str], torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Per scored position: value entries reading the right row's hidden state after the right token,
        each entry's objective, remaining budget, temperature, counter and the two uniform streams' seeds."""
        starts, total = [], 0
        for n in row_counts:
            starts.append(total)
            total += n
        rows_of: dict[int, dict[int, int]] = {}  # slot -> LoRA slot -> row
        for row, (slot, adapter) in enumerate(zip(self._cache.row_sequence, self._cache.row_adapter, strict=True)):
            rows_of.setdefault(slot, {})[adapter] = row
        source, value_slot, position, coef, base_row, implicit, owners = [], [], [], [], [], [], []
        remaining, temperature, counters, accept_seeds, residual_seeds = [], [], [], [], []
        p = 0
        for slot, length in chunks:
            number = self._slots[slot]
            seq, spec = self._seqs[number], self.outputs[number].spec
            generated = len(seq.history) - len(spec.prompt_ids)
            skip = counts[slot] - length  # the run's first tokens were catching up (prefill)
            base_start = starts[rows_of[slot][0]] + skip
            for t in range(length):
                for name, c in spec.steer:
                    lora = self.heads.lora_slot.get(name)
                    row = rows_of[slot][lora] if lora is not None else rows_of[slot][0]
                    source.append(starts[row] + skip + t)
                    value_slot.append(self.heads.value_slot[name])
                    position.append(p + t)
                    coef.append(c)
                    base_row.append(base_start + t)
                    implicit.append(float(name in self.heads.implicit))
                    owners.append(name)
                remaining.append(spec.max_new_tokens - generated - t - 1)
                temperature.append(spec.temperature)
                counters.append(generated + t)
                accept_seeds.append(derive_seed(seq.seed, 1))
                residual_seeds.append(derive_seed(seq.seed, 2))
            p += length
        dev = self.base.device

        def ints(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.long, device=dev)

        flags = torch.tensor(implicit, device=dev) if any(implicit) else None
        entries = ValueEntries(
            ints(source),
            ints(value_slot),
            ints(position),
            torch.tensor(coef, dtype=torch.float32, device=dev),
            implicit=flags,
            base_row=ints(base_row) if flags is not None else None,
        )
        temps = torch.tensor(temperature, dtype=torch.float32, device=dev)
        return entries, owners, ints(remaining), temps, ints(counters), (ints(accept_seeds), ints(residual_seeds))

    def _apply(
        self,
        chunks: list[tuple[int, int]],
        verdicts: Verdicts,
        pushes: list[tuple[dict[str, float], dict[str, float]]],
        top_ids: torch.Tensor,
    ) -> None:
        """Each scored sequence: accept its chunk up to the first rejection, then the replacement; cut
        its local cache back to the accepted history (all but its last token)."""
        accept = verdicts.accept.tolist()  # the one device sync of the step
        replacement = verdicts.replacement.tolist()
        logprob, replacement_lp = verdicts.logprob.tolist(), verdicts.replacement_logprob.tolist()
        overlap = verdicts.overlap.tolist()
        asked = max(self.outputs[self._slots[slot]].spec.top_logprobs for slot, _ in chunks)
        tops = _tops(verdicts.reported, top_ids, asked)
        runs = first_rejections(accept, [length for _, length in chunks])
        p = 0
        for (slot, length), m in zip(chunks, runs, strict=True):
            number = self._slots[slot]
            seq = self._seqs[number]
            proposal = seq.proposal
            assert proposal is not None
            seq.proposal = None
            before = len(seq.history)
            want = self.outputs[number].spec.top_logprobs
            taken = [(proposal.tokens[t], logprob[p + t], pushes[p + t][0], tops[p + t][:want]) for t in range(m)]
            if m < length:
                taken.append((replacement[p + m], replacement_lp[p + m], pushes[p + m][1], tops[p + m][:want]))
            self._take(seq, taken)
            self._counts[number].accepted += m
            self._cache.truncate(slot, before - 1 + min(m + 1, length))  # the cache holds history[:-1]
            seq.acceptance = ACCEPTANCE_MEMORY * seq.acceptance + (1 - ACCEPTANCE_MEMORY) * (
                sum(overlap[p : p + length]) / length
            )
            p += length

    def _pushes(
        self,
        pushes: torch.Tensor,
        entries: ValueEntries,
        owners: list[str],
        top_ids: torch.Tensor,
        proposed: torch.Tensor,
        replacement: torch.Tensor,
        positions: int,
    ) -> list[tuple[dict[str, float], dict[str, float]]]:
        """Per position, each objective's push (beta · w · z) on the proposed token and on the replacement."""
        out: list[tuple[dict[str, float], dict[str, float]]] = [({}, {}) for _ in range(positions)]
        if pushes.numel() == 0:
            return out
        ids = top_ids[entries.sequence]  # (M, C)
        on_proposed = (pushes * (ids == proposed[entries.sequence].unsqueeze(-1))).sum(-1).tolist()  # (M,)
        on_replacement = (pushes * (ids == replacement[entries.sequence].unsqueeze(-1))).sum(-1).tolist()
        for m, (pos, name) in enumerate(zip(entries.sequence.tolist(), owners, strict=True)):
            out[pos][0][name] = on_proposed[m]
            out[pos][1][name] = on_replacement[m]
        return out

    # ---- costs -------------------------------------------------------------------------------
    def _extra_compute(self, index: int) -> dict[str, int]:
        counts = [self._counts[n] for n in self._by_request[index] if n in self._counts]
        return {
            "upstream_calls": sum(c.calls for c in counts),
            "upstream_tokens": sum(c.proposed for c in counts),
            "accepted_tokens": sum(c.accepted for c in counts),
        }

    def _compute(self, index: int) -> Compute:
        """Local costs are the local backbone's: every scored chunk token counts (rejected ones too)."""
        base = super()._compute(index)
        tokens = sum(self._counts[n].local_tokens for n in self._by_request[index] if n in self._counts)
        return Compute(
            forwards=base.forwards,
            forward_rows=base.forward_rows,
            processed_tokens=tokens,
            flops=2.0 * self.base.num_parameters * tokens,
            samples=base.samples,
            upstream_calls=base.upstream_calls,
            upstream_tokens=base.upstream_tokens,
            accepted_tokens=base.accepted_tokens,
        )


def _tops(log_p: torch.Tensor, ids: torch.Tensor, k: int) -> list[Top]:
    """Per position, the ``k`` most likely candidates of ``log_p`` (P, C) as (token id, log-probability)."""
    if k <= 0:
        return [() for _ in range(log_p.shape[0])]
    values, columns = log_p.topk(min(k, log_p.shape[-1]), dim=-1)  # (P, k)
    tokens = ids.gather(-1, columns)  # (P, k)
    pairs = zip(tokens.tolist(), values.tolist(), strict=True)
    return [tuple((t, v) for t, v in zip(row_t, row_v, strict=True) if v > -1e30) for row_t, row_v in pairs]
