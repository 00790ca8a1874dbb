"""IVG chunk-level search: sample C chunks of L tokens per beam, keep the B best partial responses.

Integrated Value Guidance (DESIGN.md §1, seeds/002) guides at two levels:

- token level: implicit heads (an adapter whose LM-head scores are a tuned policy)
  add ``beta · implicit_weight · w · (log pi_tuned − log pi_base)`` over the base top-k,
  computed by the engine like any head value (same forward, adapter row vs base row);
- chunk level (here): every beam is continued by C candidate sequences in the same
  batch; after L tokens each candidate is scored by the weighted explicit value heads
  (``Σ w_k Q_k(s, a_last) / std_k``, the value of its last token), the B best survive
  and each spawns C children that continue from its KV cache (copied by index, never
  recomputed). Finished candidates keep competing with their final score; the best of
  the finished ones answers when no live beam is left.

With C = B = 1 the single candidate always survives and keeps its seed: plain sampling
(with token-level guidance only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from personalize.decoding.config import GenerationRequest
from personalize.decoding.rng import derive_seed
from personalize.decoding.runs import Answer, Decision, RequestRun, RunContext
from personalize.decoding.sequences import SequenceOutput, SequenceSpec


def select_beams(scores: Sequence[float], keep: int) -> list[int]:
    """Indices of the ``keep`` highest scores, best first; ties go to the earlier index."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:keep]


class SearchRun(RequestRun):
    """``ivg``: chunk-level beam search over candidate sequences with implicit token-level guidance."""

    def __init__(self, index: int, request: GenerationRequest, seed: int, context: RunContext) -> None:
        super().__init__(index, request, seed, context)
        p = request.personalization
        self.params = p.ivg
        self.streams = self.params.sequences == 1
        weights = p.nonzero_weights
        implicit = {name for name in weights if context.kinds.get(name) == "implicit"}
        scale = p.beta * self.params.implicit_weight
        self.steer = tuple((name, scale * w) for name, w in weights.items() if name in implicit and scale != 0.0)
        ranks = self.params.sequences > 1  # with one candidate there is nothing to compare
        self.score = tuple((name, w) for name, w in weights.items() if name not in implicit) if ranks else ()
        self.round = 0
        self.pool: list[tuple[float, int]] = []  # finished candidates still in contention: (score, number)

    def start(self) -> list[SequenceSpec]:
        n = self.params.sequences
        return [
            self.spec(self.seed if n == 1 else derive_seed(self.seed, i), steer=self.steer, score=self.score)
            for i in range(n)
        ]

    def update(self, outputs: Sequence[SequenceOutput], live: list[int], finished: list[int]) -> Decision:
        self.pool.extend((outputs[n].value, n) for n in finished)
        boundary = (self.round + 1) * self.params.chunk_tokens
        if live and len(outputs[live[0]].token_ids) < boundary:  # candidates advance in lockstep
            return Decision()
        candidates = [(outputs[n].value, n, True) for n in live] + [(s, n, False) for s, n in self.pool]
        kept = [candidates[i] for i in select_beams([c[0] for c in candidates], self.params.beams)]
        self.pool = [(s, n) for s, n, is_live in kept if not is_live]
        beams = [n for _, n, is_live in kept if is_live]
        if not beams:  # every surviving hypothesis is complete: the best one answers
            return Decision(retire=list(live), answer=Answer(kept[0][1]))
        self.round += 1
        children = [
            (parent, self._child(outputs[parent].spec, c)) for parent in beams for c in range(self.params.candidates)
        ]
        return Decision(retire=list(live), branch=children)

    def _child(self, parent: SequenceSpec, c: int) -> SequenceSpec:
        """Candidate ``c`` continuing ``parent``: its own random stream (the parent's when C = 1)."""
        return parent if self.params.candidates == 1 else replace(parent, seed=derive_seed(parent.seed, c))
