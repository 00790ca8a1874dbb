"""Decoding methods: how a request becomes sequences, and how their outputs become one answer.

- ``base``: one sequence, no steering (plain sampling).
- ``vas``: one sequence steered by the weighted heads (explicit value heads and implicit ones).
- ``bon``: Best-of-N — N unsteered sequences with derived seeds, scored by a
  reward function (default: the weighted sum of the objectives' reward
  functions), the best returned. Not streamed: the answer exists only at the end.
- ``ivg``: implicit token-level guidance + chunk-level beam search on explicit values (``search.py``).
- ``aisp``: adaptive importance sampling of a pre-logit perturbation (``aisp.py``).

New methods plug in here: a :class:`~personalize.decoding.runs.RequestRun` subclass and a line in :func:`plan`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from personalize.decoding.aisp import AispRun
from personalize.decoding.config import METHODS, GenerationRequest
from personalize.decoding.rng import derive_seed
from personalize.decoding.runs import Answer, Decision, RequestRun, RunContext
from personalize.decoding.search import SearchRun
from personalize.decoding.sequences import SequenceOutput, SequenceSpec
from personalize.errors import RewardError, UnknownMethodError
from personalize.models import BaseModel

RewardFn = Callable[[Sequence[str], Sequence[str]], torch.Tensor]


class SingleRun(RequestRun):
    """``base`` and ``vas``: one sequence, its text is the answer."""

    def start(self) -> list[SequenceSpec]:
        p = self.request.personalization
        steer = tuple((name, p.beta * w) for name, w in p.active_weights.items()) if p.method == "vas" else ()
        return [self.spec(self.seed, steer=steer)]

    def update(self, outputs: Sequence[SequenceOutput], live: list[int], finished: list[int]) -> Decision:
        return Decision(answer=Answer(finished[0])) if finished else Decision()


class BestOfRun(RequestRun):
    """``bon``: N plain samples, the one with the highest weighted reward wins."""

    streams = False

    def __init__(self, index: int, request: GenerationRequest, seed: int, context: RunContext) -> None:
        super().__init__(index, request, seed, context)
        self.done: list[int] = []

    def start(self) -> list[SequenceSpec]:
        n = self.request.personalization.best_of
        return [self.spec(self.seed if n == 1 else derive_seed(self.seed, i)) for i in range(n)]

    def update(self, outputs: Sequence[SequenceOutput], live: list[int], finished: list[int]) -> Decision:
        self.done.extend(finished)
        if live or len(self.done) < self.request.personalization.best_of:
            return Decision()
        numbers = sorted(self.done)  # sample order: ties go to the lower seed index
        scores = self.context.rank(self.request, [outputs[n].text.text for n in numbers])
        best = max(range(len(numbers)), key=scores.__getitem__)
        return Decision(answer=Answer(numbers[best], scores[best]))


def plan(index: int, request: GenerationRequest, seed: int, context: RunContext) -> RequestRun:
    """The run that decodes ``request`` (seed already resolved)."""
    method = request.personalization.method
    runs: dict[str, type[RequestRun]] = {
        "base": SingleRun,
        "vas": SingleRun,
        "bon": BestOfRun,
        "ivg": SearchRun,
        "aisp": AispRun,
    }
    if method not in runs:
        raise UnknownMethodError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    return runs[method](index, request, seed, context)


def streams(request: GenerationRequest) -> bool:
    """Whether tokens can be shown as they are produced (otherwise one event carries the whole answer)."""
    p = request.personalization
    return p.method in ("base", "vas") or (p.method == "ivg" and p.ivg.sequences == 1)


def default_reward(request: GenerationRequest, reward_names: Mapping[str, str] | None = None) -> RewardFn:
    """The weighted sum of the request's objectives' reward functions.

    ``reward_names`` maps an objective to the reward its head names (``head.json``'s
    ``reward``); an objective not in it uses the reward of its own name. Objectives
    naming the same reward add their weights.
    """
    weights = request.personalization.nonzero_weights
    if not weights:
        raise RewardError(
            f"method {request.personalization.method!r} needs non-zero weights (or an explicit reward function) "
            "to rank samples"
        )
    from personalize.rewards import weighted_reward

    by_reward: dict[str, float] = {}
    for objective, weight in weights.items():
        name = (reward_names or {}).get(objective) or objective
        by_reward[name] = by_reward.get(name, 0.0) + weight
    return weighted_reward(by_reward)


def rank_texts(
    request: GenerationRequest,
    texts: Sequence[str],
    base: BaseModel,
    reward: RewardFn | None,
    reward_names: Mapping[str, str] | None = None,
) -> list[float]:
    """Each response's reward: ``reward`` if given, else the weighted rewards the objectives' heads name."""
    scorer = reward or default_reward(request, reward_names)
    prompt = base.decode(request.prompt_ids)
    scores = scorer([prompt] * len(texts), list(texts)).float()  # (N,)
    if scores.shape != (len(texts),) or not bool(torch.isfinite(scores).all()):
        raise RewardError(f"reward returned {tuple(scores.shape)} / non-finite scores for {len(texts)} samples")
    return [float(x) for x in scores.tolist()]
