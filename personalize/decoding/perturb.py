"""AISP's pre-logit perturbations as tensors: what the sampler adds to the base rows' final hidden states.

Sample n of an AISP round adds ``v[n, t] = mu[t] + sigma · eps[n, t]`` at response position t, with
``eps`` standard normal noise drawn from the sample's seed and t (counter-based: a sample's noise does
not depend on its batch). ``aisp.py`` runs the rounds; this module only applies them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from personalize.decoding.rng import normals
from personalize.decoding.sequences import Perturbation, SequenceSpec


@dataclass(frozen=True)
class Perturbations:
    """The perturbed sequences of a batch layout, as tensors (P of them)."""

    sequence: torch.Tensor  # (P,) live position of each perturbed sequence
    seeds: torch.Tensor  # (P,) int64 noise seeds
    sigma: torch.Tensor  # (P,) float32
    mean: torch.Tensor  # (G, T, H) the distinct means in use
    mean_index: torch.Tensor  # (P,) which mean each sequence follows

    def apply(self, hidden: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """hidden (S, H) base rows' final states, steps (S,) response positions -> perturbed (S, H)."""
        _, T, H = self.mean.shape
        t = steps[self.sequence]  # (P,) response positions
        noise = normals(self.seeds, t, H)  # (P, H)
        shift = self.mean[self.mean_index, t.clamp_max(T - 1)] + self.sigma.unsqueeze(-1) * noise  # (P, H)
        return hidden.index_add(0, self.sequence, shift.to(hidden.dtype))  # (S, H)


def build_perturbations(specs: Sequence[SequenceSpec], hidden_size: int, device: torch.device) -> Perturbations | None:
    """Tensors for the specs (in live order) that carry a perturbation; None when none does."""
    positions = [pos for pos, spec in enumerate(specs) if spec.perturb is not None]
    if not positions:
        return None
    perturbs = [p for spec in specs if (p := spec.perturb) is not None]
    distinct: dict[int, Perturbation] = {}
    for p in perturbs:
        distinct.setdefault(id(p), p)
    length = max([p.mean.shape[0] for p in distinct.values() if p.mean is not None] + [1])
    means = torch.zeros(len(distinct), length, hidden_size, device=device)  # (G, T, H)
    for g, p in enumerate(distinct.values()):
        if p.mean is not None:
            means[g, : p.mean.shape[0]] = p.mean
    slot = {key: g for g, key in enumerate(distinct)}
    return Perturbations(
        sequence=torch.tensor(positions, dtype=torch.long, device=device),
        seeds=torch.tensor([specs[pos].seed for pos in positions], dtype=torch.long, device=device),
        sigma=torch.tensor([p.sigma for p in perturbs], dtype=torch.float32, device=device),
        mean=means,
        mean_index=torch.tensor([slot[id(p)] for p in perturbs], dtype=torch.long, device=device),
    )
