"""Rollouts: responses sampled for training prompts, batched and seeded.

The policy is the plain base model, or, for a second round (DESIGN.md §4), the base model
steered by heads already trained (VAS): values learned on those rollouts are the values of
the steered policy, which is where decoding with the heads actually goes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from personalize.data import PromptInput, prompt_ids, prompt_text
from personalize.decoding import Engine, GenerationRequest, Personalization, SamplingParams
from personalize.errors import ConfigError


@dataclass(frozen=True)
class RolloutConfig:
    """How training responses are sampled (temperature 1 with the decoder's top-k, per DESIGN.md)."""

    samples_per_prompt: int = 2
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_k: int = 20
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("samples_per_prompt", "max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class Rollout:
    prompt: str
    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]
    response: str
    finish_reason: str
    seed: int
    stop_token_id: int | None = None
    """The end-of-sequence token the policy sampled to stop (None: cut at the length limit, or a rollout
    file written before this field existed)."""


def actions(rollout: Rollout, eos: int) -> list[int]:
    """The tokens the policy chose: the response, plus the EOS it sampled when it stopped on its own.

    Results leave the EOS out of ``response_ids``; training must not, or the value (and
    likelihood) of ending the answer is never learned. The EOS is the one recorded in the
    rollout (a model can have several: end of turn, end of text); ``eos`` is used for
    rollouts that did not record it.
    """
    if rollout.finish_reason != "stop":
        return list(rollout.response_ids)
    return [*rollout.response_ids, rollout.stop_token_id if rollout.stop_token_id is not None else eos]


def sample_rollouts(
    engine: Engine,
    prompts: Sequence[PromptInput],
    config: RolloutConfig = RolloutConfig(),
    *,
    policy: Personalization | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> list[Rollout]:
    """``samples_per_prompt`` responses per prompt, in batches, from the plain base policy or from
    ``policy``: a ``vas`` personalization over heads the engine holds (a steered second round)."""
    policy = policy or Personalization(method="base")
    if policy.method not in ("base", "vas"):
        raise ConfigError(f"rollouts sample from the base or a vas-steered policy, not {policy.method!r}")
    missing = sorted(name for name, w in policy.weights.items() if w != 0 and name not in engine.objectives)
    if missing:
        loaded = sorted(engine.objectives)
        raise ConfigError(f"the rollout policy weighs {missing}, which have no head; loaded: {loaded}")
    jobs = [(p, i) for p in prompts for i in range(config.samples_per_prompt)]
    rollouts: list[Rollout] = []
    for start in range(0, len(jobs), config.batch_size):
        chunk = jobs[start : start + config.batch_size]
        requests, seeds = [], []
        for offset, (prompt, _) in enumerate(chunk):
            seed = config.seed * 1_000_003 + start + offset
            seeds.append(seed)
            sampling = SamplingParams(
                max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_k=config.top_k, seed=seed
            )
            ids = tuple(prompt_ids(engine.base, prompt))
            requests.append(GenerationRequest(ids, sampling, policy))
        for (prompt, _), request, seed, result in zip(chunk, requests, seeds, engine.generate(requests), strict=True):
            rollouts.append(
                Rollout(
                    prompt_text(prompt),
                    request.prompt_ids,
                    result.token_ids,
                    result.text,
                    result.finish_reason,
                    seed,
                    result.stop_token_id,
                )
            )
        if on_batch is not None:
            on_batch(len(chunk))
    return rollouts


def save_rollouts(rollouts: Sequence[Rollout], path: Path) -> None:
    """Write rollouts as JSON lines, whole or not at all (an interrupted write leaves no file to reuse)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for r in rollouts:
            fh.write(json.dumps(asdict(r), ensure_ascii=False) + "\n")
    tmp.replace(path)


def load_rollouts(path: Path) -> list[Rollout]:
    """Read rollouts written by :func:`save_rollouts`.

    Lines are split on ``\\n`` only: a response may hold other line breaks (U+2028, U+0085, ...),
    which JSON leaves unescaped and ``str.splitlines`` would cut a record at.
    """
    out = []
    for line in path.read_text(encoding="utf-8").split("\n"):
        if line.strip():
            d = json.loads(line)
            d["prompt_ids"], d["response_ids"] = tuple(d["prompt_ids"]), tuple(d["response_ids"])
            out.append(Rollout(**d))
    return out
