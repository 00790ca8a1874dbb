"""AISP: adaptive importance sampling of a Gaussian perturbation in pre-logit space (seeds/003).

For one request, iteration i samples N responses (one batch of sequences). Sample n
adds ``v[n, t] = mu[t] + sigma · eps[n, t]`` to the base row's final hidden state
before the LM head at response position t, with ``eps`` standard normal noise drawn
from the sample's seed and t (counter-based: a sample's noise does not depend on its
batch). When all N are done their weighted rewards ``r`` give importance weights
``softmax(r / lambda)``, and ``mu`` moves to the weighted mean of the ``v`` (at each
position, over the samples that reached it). After I iterations the best sample
seen answers. The noise is recomputed from the seeds, never stored.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from personalize.decoding.config import GenerationRequest
from personalize.decoding.rng import derive_seed, normals
from personalize.decoding.runs import Answer, Decision, RequestRun, RunContext
from personalize.decoding.sequences import Perturbation, SequenceOutput, SequenceSpec


def update_mean(
    mean: torch.Tensor,
    seeds: Sequence[int],
    lengths: Sequence[int],
    rewards: Sequence[float],
    *,
    sigma: float,
    lam: float,
) -> torch.Tensor:
    """``mu'[t] = Σ_n w[n, t] v_n[t]``, ``w[:, t] = softmax(r / lambda)`` over the samples that reached position t.

    mean (T, H) -> (T, H). ``v_n = mu + sigma · eps_n``, so ``mu' = mu + sigma · Σ_n w_n eps_n``;
    positions no sample reached keep their mean.
    """
    T, H = mean.shape
    dev = mean.device
    positions = torch.arange(T, device=dev)  # (T,)
    reached = positions.unsqueeze(0) < torch.tensor(list(lengths), device=dev).unsqueeze(-1)  # (N, T)
    logits = torch.tensor(list(rewards), dtype=torch.float32, device=dev) / lam  # (N,)
    masked = logits.unsqueeze(-1).expand(-1, T).masked_fill(~reached, -torch.inf)  # (N, T)
    weights = torch.softmax(masked, dim=0).nan_to_num(0.0)  # (N, T); an all-masked column gives 0
    step = torch.zeros(T, H, device=dev)
    for n, seed in enumerate(seeds):  # one sample's noise at a time: (T, H), recomputed from its seed
        eps = normals(torch.full((T,), seed, dtype=torch.long, device=dev), positions, H)  # (T, H)
        step += weights[n].unsqueeze(-1) * eps
    return mean + sigma * step


class AispRun(RequestRun):
    """``aisp``: I iterations of N perturbed samples; mu follows the importance-weighted samples."""

    streams = False

    def __init__(self, index: int, request: GenerationRequest, seed: int, context: RunContext) -> None:
        super().__init__(index, request, seed, context)
        self.params = request.personalization.aisp
        self.iteration = 0
        self.mean: torch.Tensor | None = None  # (T, H); None: zero (the first iteration)
        self.done: list[int] = []
        self.best: tuple[float, int] | None = None

    def start(self) -> list[SequenceSpec]:
        perturb = Perturbation(self.params.sigma, self.mean)
        n, total = self.params.samples, self.params.total
        return [
            self.spec(self.seed if total == 1 else derive_seed(self.seed, self.iteration * n + i), perturb=perturb)
            for i in range(n)
        ]

    def update(self, outputs: Sequence[SequenceOutput], live: list[int], finished: list[int]) -> Decision:
        self.done.extend(finished)
        if live or len(self.done) < self.params.samples:
            return Decision()
        numbers, self.done = sorted(self.done), []
        rewards = self.context.rank(self.request, [outputs[n].text.text for n in numbers])
        for reward, number in zip(rewards, numbers, strict=True):
            if self.best is None or reward > self.best[0]:
                self.best = (reward, number)
        assert self.best is not None
        self.iteration += 1
        if self.iteration == self.params.iterations:
            return Decision(answer=Answer(self.best[1], self.best[0]))
        if self.params.sigma > 0.0:
            T, H = self.request.sampling.max_new_tokens, self.context.hidden_size
            mean = self.mean if self.mean is not None else torch.zeros(T, H, device=self.context.device)
            seeds = [outputs[n].spec.seed for n in numbers]
            lengths = [outputs[n].steps for n in numbers]
            self.mean = update_mean(mean, seeds, lengths, rewards, sigma=self.params.sigma, lam=self.params.lam)
        return Decision(spawn=self.start())
