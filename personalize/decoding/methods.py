"""Decoding methods: how a request becomes sequences, and how their outputs become one answer.

- ``base``: one sequence, no steering (plain sampling).
- ``vas``: one sequence steered by the weighted value heads.
- ``bon``: Best-of-N — N unsteered sequences with derived seeds, scored by a
  reward function (default: the weighted sum of the objectives' reward
  functions), the best returned. Not streamed: the answer exists only at the end.

New methods plug in here: ``expand`` decides the sequences, ``reduce`` the answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from personalize.decoding.config import GenerationRequest
from personalize.decoding.rng import derive_seed
from personalize.errors import RewardError

if TYPE_CHECKING:
    from personalize.decoding.batch import SequenceSpec
    from personalize.models import BaseModel

RewardFn = Callable[[Sequence[str], Sequence[str]], torch.Tensor]


def expand(index: int, request: GenerationRequest, seed: int) -> list[SequenceSpec]:
    """The sequences that decode ``request`` (seed already resolved)."""
    from personalize.decoding.batch import SequenceSpec

    p, s = request.personalization, request.sampling
    steer = tuple((name, p.beta * w) for name, w in p.active_weights.items()) if p.method == "vas" else ()
    count = p.best_of if p.method == "bon" else 1
    return [
        SequenceSpec(
            request_index=index,
            prompt_ids=request.prompt_ids,
            seed=seed if count == 1 else derive_seed(seed, i),
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=p.top_k,
            sample_top_k=s.top_k,
            max_new_tokens=s.max_new_tokens,
            stop=s.stop,
            ignore_eos=s.ignore_eos,
            steer=steer,
        )
        for i in range(count)
    ]


def streams(request: GenerationRequest) -> bool:
    """Whether tokens can be shown as they are produced."""
    return request.personalization.method != "bon"


def default_reward(request: GenerationRequest) -> RewardFn:
    """The weighted sum of the request's objectives' reward functions."""
    weights = {k: w for k, w in request.personalization.weights.items() if w != 0.0}
    if not weights:
        raise RewardError("method 'bon' needs non-zero weights (or an explicit reward function) to rank samples")
    from personalize.rewards import weighted_reward

    return weighted_reward(weights)


def reduce(
    request: GenerationRequest, texts: Sequence[str], base: BaseModel, reward: RewardFn | None
) -> tuple[int, float | None]:
    """Index of the winning sequence among ``texts`` and its score."""
    if request.personalization.method != "bon":
        return 0, None
    scorer = reward or default_reward(request)
    prompt = base.decode(request.prompt_ids)
    scores = scorer([prompt] * len(texts), list(texts)).float()  # (N,)
    if scores.shape != (len(texts),) or not bool(torch.isfinite(scores).all()):
        raise RewardError(f"reward returned {tuple(scores.shape)} / non-finite scores for {len(texts)} samples")
    best = int(scores.argmax())
    return best, float(scores[best])
