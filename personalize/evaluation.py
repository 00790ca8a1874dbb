"""Evaluation: every method on the eval prompts, scored by every objective's reward.

Quality is measured in batched runs over all eval prompts (the same sampling
for every method). Best-of-N for every N is read from ONE set of N_max base
samples per prompt (the first N of them), which is distributed exactly like
independent Best-of-N runs (its compute counts one shared prompt prefill, as a
real ``bon`` request does). ``ivg`` runs its chunk search on the objective's
value head (plus an implicit head at the token level when one is mapped to it);
``aisp`` ranks its samples with the same reward functions Best-of-N uses.
Compute per response (forwards, FLOPs estimate) comes from each result's
``Compute``. Latency is measured separately, one request at a time, on a few
prompts, with real ``bon`` runs.

With a cache directory, every decoding run (one configuration over all prompts)
and every latency measurement is stored under a key made of everything that
decides its outcome: base model, tokenizer, prompts, sampling settings, the
request's personalization and the metadata of the heads it uses. A later
evaluation, e.g. with one more objective, decodes only what is new and scores
the stored texts with all of its rewards.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

import torch

from personalize.data import PromptInput, prompt_ids, prompt_text
from personalize.decoding import Engine, GenerationRequest, GenerationResult, Personalization, SamplingParams
from personalize.decoding.config import AISPParams, Compute, IVGParams
from personalize.errors import ConfigError
from personalize.remote.engine import RemoteEngine
from personalize.store import RunCache

__all__ = ["EvalConfig", "EvalReport", "Evaluator", "MethodRow", "RunCache", "Stat", "markdown_table"]

RewardFn = Callable[[Sequence[str], Sequence[str]], torch.Tensor]


@dataclass(frozen=True)
class EvalConfig:
    objectives: tuple[str, ...]
    betas: tuple[float, ...] = (1.0, 2.0, 4.0)
    bon_sizes: tuple[int, ...] = (2, 4, 8, 16)
    sweeps: tuple[tuple[str, str], ...] = (("concise", "helpful"),)
    """Objective pairs to sweep the weight between, one sweep each (empty: none)."""
    sweep_steps: int = 5
    sweep_beta: float = 2.0
    max_new_tokens: int = 128
    temperature: float = 1.0
    sample_top_k: int = 20
    batch_size: int = 16
    latency_prompts: int = 6
    seed: int = 0
    ivg: IVGParams | None = field(default_factory=IVGParams)
    """Chunk-search settings of the ivg rows (None: no ivg rows)."""
    ivg_beta: float = 1.0
    """Token-level strength of the implicit heads in ivg rows (beta · w = 1: the tuned policy over the top-k)."""
    implicit: Mapping[str, str] = field(default_factory=dict)
    """Objective -> implicit head guiding ivg's token level for it (objectives not listed: chunk search only)."""
    aisp_samples: tuple[int, ...] = (2, 4)
    """N of the aisp rows, one row each (empty: no aisp rows); sigma, lambda and I come from ``aisp``."""
    aisp: AISPParams = field(default_factory=AISPParams)

    def __post_init__(self) -> None:
        if not self.objectives:
            raise ConfigError("evaluation needs at least one objective")
        for pair in self.sweeps:
            if len(pair) != 2 or pair[0] == pair[1]:
                raise ConfigError(f"a sweep needs two different objectives, got {list(pair)}")
            if any(o not in self.objectives for o in pair):
                raise ConfigError(f"sweep objectives {list(pair)} must be among {list(self.objectives)}")
        unknown = sorted(set(self.implicit) - set(self.objectives))
        if unknown:
            raise ConfigError(f"implicit heads are mapped to {unknown}, which are not among {self.objectives}")
        for n in self.aisp_samples:
            replace(self.aisp, samples=n)  # validates N with the other AISP settings
        if any(n < 1 for n in self.bon_sizes):
            raise ConfigError(f"Best-of-N sizes must be >= 1, got {list(self.bon_sizes)}")


@dataclass(frozen=True)
class Stat:
    mean: float
    ci95: float  # half-width of the normal 95% interval

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        n = len(values)
        mean = statistics.fmean(values) if n else float("nan")
        sd = statistics.stdev(values) if n > 1 else 0.0
        return cls(mean, 1.96 * sd / math.sqrt(n) if n else float("nan"))


@dataclass
class MethodRow:
    label: str
    method: str
    weights: dict[str, float]
    beta: float
    best_of: int = 1
    objective: str = ""
    """The objective the row optimises ('' for base and the sweeps)."""
    rewards: dict[str, Stat] = field(default_factory=dict)
    length: Stat = Stat(0.0, 0.0)
    seconds_per_response: float = 0.0
    """Batched throughput: wall time of the run / responses (for bon: N_max sampling shared, see notes)."""
    flops_per_response: float = 0.0
    forwards_per_response: float = 0.0
    """Sequential model forwards per response (its depth: prefills included)."""
    samples_per_response: float = 1.0
    latency_s: float | None = None
    """One request at a time, median over the latency prompts."""
    gain: Stat | None = None
    """Paired gain over base on the row's own objective: the mean and 95% half-width of the per-prompt
    differences (this row's reward minus base's on the same prompt); None for base and the sweeps.
    Prompts differ far more from each other than methods do, so this interval is much narrower than
    the difference of the two rows' own intervals suggests."""
    samples: list[str] = field(default_factory=list)
    prompt_scores: dict[str, list[float]] = field(default_factory=dict)
    """Each objective's reward prompt by prompt, in prompt order (for paired or subset analyses)."""


@dataclass
class EvalReport:
    config: EvalConfig
    base_model: str
    prompts: int
    rows: list[MethodRow]
    sweep: list[MethodRow]
    """The sweeps' rows, one sweep after the other (``sweep_rows`` picks one)."""
    head_versions: dict[str, str]

    def sweep_rows(self, pair: tuple[str, str]) -> list[MethodRow]:
        """The rows of the sweep from ``pair[0]`` to ``pair[1]``, in weight order."""
        return [r for r in self.sweep if list(r.weights) == list(pair)]

    def to_json(self) -> dict[str, object]:
        def row(r: MethodRow) -> dict[str, object]:
            d = asdict(r)
            d["samples"] = r.samples[:3]
            d["prompt_scores"] = {k: [round(x, 6) for x in v] for k, v in r.prompt_scores.items()}  # ample for [-1, 1]
            return d

        return {
            "config": asdict(self.config),
            "base_model": self.base_model,
            "prompts": self.prompts,
            "head_versions": self.head_versions,
            "rows": [row(r) for r in self.rows],
            "sweep": [row(r) for r in self.sweep],
        }


def _score(rewards: Mapping[str, RewardFn], prompts: Sequence[str], texts: Sequence[str]) -> dict[str, list[float]]:
    return {name: fn(list(prompts), list(texts)).float().tolist() for name, fn in rewards.items()}


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def _result_record(result: GenerationResult) -> dict[str, object]:
    return {
        "token_ids": list(result.token_ids),
        "text": result.text,
        "finish_reason": result.finish_reason,
        "prompt_tokens": result.prompt_tokens,
        "compute": asdict(result.compute),
        "reward": result.reward,
    }


class Evaluator:
    """Runs the evaluation; ``progress(label)`` is called as each configuration starts.

    ``cache`` (optional) stores every decoding run and latency measurement, so that an interrupted
    or extended evaluation decodes only what it has not decoded before (see the module docstring).
    """

    def __init__(
        self,
        engine: Engine | RemoteEngine,
        rewards: Mapping[str, RewardFn],
        prompts: Sequence[PromptInput],
        config: EvalConfig,
        progress: Callable[[str], None] = lambda _: None,
        cache: RunCache | None = None,
    ) -> None:
        self.engine, self.rewards, self.config = engine, rewards, config
        self.prompts = [prompt_text(p) for p in prompts]
        """What the rewards see as each prompt (a chat's last user message)."""
        self.progress = progress
        self.cache = cache
        self.prompt_ids = [tuple(prompt_ids(engine.base, p)) for p in prompts]
        self.plans: dict[str, tuple[Personalization, RewardFn | None]] = {}
        """Each row's personalization and ranking reward (replayed for latency)."""
        self.scores: dict[str, dict[str, list[float]]] = {}
        """Each row's rewards, objective -> one score per prompt (for the paired gains)."""

    def _cache_key(
        self, kind: str, personalization: Personalization, prompt_ids: Sequence[tuple[int, ...]], **extra: object
    ) -> str | None:
        if self.cache is None:
            return None
        c, base = self.config, self.engine.base
        used = sorted(set(personalization.weights) & set(self.engine.objectives))
        reward = next((name for name, fn in self.rewards.items() if fn is extra.get("reward")), None)
        extra = {k: v for k, v in extra.items() if k != "reward"}
        return self.cache.key(
            {
                "kind": kind,
                "base": base.backbone_id,
                "tokenizer": base.tokenizer_hash,
                "prompts": hashlib.sha256(json.dumps(list(prompt_ids)).encode()).hexdigest(),
                "sampling": [c.max_new_tokens, c.temperature, c.sample_top_k, c.seed, c.batch_size],
                "personalization": repr(personalization),
                "heads": {name: asdict(self.engine.objectives[name]) for name in used},
                "reward": reward,
                **extra,
            }
        )

    def _sampling(self, seed: int) -> SamplingParams:
        c = self.config
        return SamplingParams(
            max_new_tokens=c.max_new_tokens, temperature=c.temperature, top_k=c.sample_top_k, seed=seed
        )

    def _run(
        self, personalization: Personalization, seed_offset: int = 0, reward: RewardFn | None = None
    ) -> tuple[list[GenerationResult], float]:
        """One configuration over every prompt: results and the run's wall time (stored or decoded now)."""
        key = self._cache_key("run", personalization, self.prompt_ids, seed_offset=seed_offset, reward=reward)
        stored = self.cache.get(key) if self.cache is not None and key is not None else None
        if stored is not None:
            versions = self.engine.head_versions(sorted(set(personalization.weights) & set(self.engine.objectives)))
            records = stored["results"]
            assert isinstance(records, list)
            results = [
                GenerationResult(
                    token_ids=tuple(r["token_ids"]),
                    text=r["text"],
                    finish_reason=r["finish_reason"],
                    prompt_tokens=r["prompt_tokens"],
                    personalization=personalization,
                    head_versions=versions,
                    compute=Compute(**r["compute"]),
                    reward=r["reward"],
                )
                for r in records
            ]
            seconds = stored["seconds"]
            assert isinstance(seconds, float | int)
            return results, float(seconds)
        results, seconds = self._decode(personalization, seed_offset, reward)
        if self.cache is not None and key is not None:
            self.cache.put(key, {"seconds": seconds, "results": [_result_record(r) for r in results]})
        return results, seconds

    def _decode(
        self, personalization: Personalization, seed_offset: int, reward: RewardFn | None
    ) -> tuple[list[GenerationResult], float]:
        requests = [
            GenerationRequest(ids, self._sampling(self.config.seed * 100_003 + i + seed_offset), personalization)
            for i, ids in enumerate(self.prompt_ids)
        ]
        results: list[GenerationResult] = []
        start = time.perf_counter()
        for i in range(0, len(requests), self.config.batch_size):
            results.extend(self.engine.generate(requests[i : i + self.config.batch_size], reward=reward))
        return results, time.perf_counter() - start

    def _row(
        self, label: str, personalization: Personalization, objective: str = "", reward: RewardFn | None = None
    ) -> MethodRow:
        self.progress(label)
        self.plans[label] = (personalization, reward)
        results, seconds = self._run(personalization, reward=reward)
        texts = [r.text for r in results]
        scores = self.scores[label] = _score(self.rewards, self.prompts, texts)
        return MethodRow(
            label=label,
            method=personalization.method,
            weights=dict(personalization.weights),
            beta=personalization.beta,
            best_of=personalization.best_of if personalization.method == "bon" else 1,
            objective=objective,
            rewards={k: Stat.of(v) for k, v in scores.items()},
            length=Stat.of([float(r.completion_tokens) for r in results]),
            seconds_per_response=seconds / len(results),
            flops_per_response=statistics.fmean(r.compute.flops for r in results),
            forwards_per_response=statistics.fmean(r.compute.forwards for r in results),
            samples_per_response=statistics.fmean(r.compute.samples for r in results),
            samples=texts[:3],
        )

    def _ivg_row(self, objective: str, params: IVGParams) -> MethodRow:
        weights = {objective: 1.0}
        implicit = self.config.implicit.get(objective)
        if implicit is not None:
            weights[implicit] = 1.0
        p = Personalization(weights, beta=self.config.ivg_beta, method="ivg", ivg=params)
        label = f"ivg {objective}=1 C={params.candidates} L={params.chunk_tokens} B={params.beams}"
        return self._row(label + (f" +{implicit}" if implicit else ""), p, objective)

    def _aisp_row(self, objective: str, samples: int) -> MethodRow:
        params = replace(self.config.aisp, samples=samples)
        p = Personalization({objective: 1.0}, method="aisp", aisp=params)
        label = f"aisp {objective}=1 N={samples} I={params.iterations} sigma={params.sigma:g}"
        return self._row(label, p, objective, reward=self.rewards[objective])

    def _bon_rows(self) -> list[MethodRow]:
        """Best-of-N for each N and objective from one set of N_max samples per prompt (none without sizes)."""
        if not self.config.bon_sizes:
            return []
        n_max = max(self.config.bon_sizes)
        self.progress(f"best-of-{n_max} samples")
        samples: list[list[GenerationResult]] = []
        seconds = 0.0
        for k in range(n_max):
            results, run_s = self._run(Personalization(method="base"), seed_offset=7919 * (k + 1))
            samples.append(results)
            seconds += run_s
        per_sample_s = seconds / (n_max * len(self.prompts))
        scored = [_score(self.rewards, self.prompts, [r.text for r in results]) for results in samples]
        rows = []
        for objective in self.config.objectives:
            for n in self.config.bon_sizes:
                picks = [_argmax([scored[k][objective][i] for k in range(n)]) for i in range(len(self.prompts))]
                chosen = [samples[k][i] for i, k in enumerate(picks)]
                label = f"bon N={n} ({objective})"
                self.scores[label] = {name: [scored[k][name][i] for i, k in enumerate(picks)] for name in self.rewards}
                self.plans[label] = (
                    Personalization({objective: 1.0}, method="bon", best_of=n),
                    self.rewards[objective],
                )
                rows.append(
                    MethodRow(
                        label=label,
                        method="bon",
                        weights={objective: 1.0},
                        beta=0.0,
                        best_of=n,
                        objective=objective,
                        rewards={name: Stat.of(values) for name, values in self.scores[label].items()},
                        length=Stat.of([float(r.completion_tokens) for r in chosen]),
                        seconds_per_response=n * per_sample_s,
                        flops_per_response=statistics.fmean(
                            self._bon_flops([samples[k][i] for k in range(n)]) for i in range(len(self.prompts))
                        ),
                        forwards_per_response=statistics.fmean(
                            max(samples[k][i].compute.forwards for k in range(n)) for i in range(len(self.prompts))
                        ),
                        samples_per_response=float(n),
                        samples=[r.text for r in chosen[:3]],
                    )
                )
        return rows

    def _gain(self, label: str, objective: str) -> Stat:
        """``label``'s reward on ``objective`` minus base's, prompt by prompt."""
        base, mine = self.scores["base"][objective], self.scores[label][objective]
        return Stat.of([m - b for m, b in zip(mine, base, strict=True)])

    def _bon_flops(self, results: Sequence[GenerationResult]) -> float:
        """FLOPs of a real Best-of-N request over these samples: its N sequences share one prompt prefill."""
        prompt_flops = 2.0 * self.engine.base.num_parameters * results[0].prompt_tokens
        return sum(r.compute.flops for r in results) - (len(results) - 1) * prompt_flops

    def _latency(self, label: str) -> float:
        """Median wall time of one request alone (real runs, bon included)."""
        personalization, reward = self.plans[label]
        prompt_ids = self.prompt_ids[: self.config.latency_prompts]
        key = self._cache_key("latency", personalization, prompt_ids, reward=reward)
        stored = self.cache.get(key) if self.cache is not None and key is not None else None
        if stored is not None:
            median = stored["median_s"]
            assert isinstance(median, float | int)
            return float(median)
        times = []
        for i, ids in enumerate(prompt_ids):
            request = GenerationRequest(ids, self._sampling(10_000 + i), personalization)
            start = time.perf_counter()
            self.engine.generate([request], reward=reward)
            times.append(time.perf_counter() - start)
        if self.cache is not None and key is not None:
            self.cache.put(key, {"median_s": statistics.median(times), "times_s": times})
        return statistics.median(times)

    def run(self) -> EvalReport:
        c = self.config
        rows = [self._row("base", Personalization(method="base"))]
        for objective in c.objectives:
            for beta in c.betas:
                vas = Personalization({objective: 1.0}, beta=beta)
                rows.append(self._row(f"vas {objective}=1 beta={beta:g}", vas, objective))
        rows.extend(self._bon_rows())
        for objective in c.objectives:
            if c.ivg is not None:
                rows.append(self._ivg_row(objective, c.ivg))
            rows.extend(self._aisp_row(objective, n) for n in c.aisp_samples)
        sweep = []
        for a, b in c.sweeps:
            for step in range(c.sweep_steps):
                alpha = step / max(c.sweep_steps - 1, 1)
                weights = {a: round(1.0 - alpha, 4), b: round(alpha, 4)}
                sweep.append(
                    self._row(
                        f"sweep {a}={weights[a]:g},{b}={weights[b]:g}", Personalization(weights, beta=c.sweep_beta)
                    )
                )
        for row in [*rows, *sweep]:
            row.prompt_scores = self.scores[row.label]
            if row.objective:
                row.gain = self._gain(row.label, row.objective)
        if c.latency_prompts:
            first = c.objectives[0]
            for row in rows:
                if row.method in ("bon", "ivg", "aisp") and row.objective != first:
                    continue
                self.progress(f"latency: {row.label}")
                row.latency_s = self._latency(row.label)
        versions = self.engine.head_versions([o for o in c.objectives if o in self.engine.objectives])
        return EvalReport(c, self.engine.base.backbone_id, len(self.prompts), rows, sweep, versions)


def markdown_table(report: EvalReport) -> str:
    objectives = list(report.config.objectives)
    head = [
        "method",
        *objectives,
        "own-objective gain over base (paired)",
        "length (tokens)",
        "s/response (batched)",
        "latency s (alone)",
        "GFLOPs/response",
        "forwards/response",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report.rows + report.sweep:
        cells = [r.label]
        cells += [f"{r.rewards[o].mean:.3f} ± {r.rewards[o].ci95:.3f}" for o in objectives]
        cells += [
            "" if r.gain is None else f"{r.gain.mean:+.3f} ± {r.gain.ci95:.3f}",
            f"{r.length.mean:.1f}",
            f"{r.seconds_per_response:.2f}",
            "" if r.latency_s is None else f"{r.latency_s:.2f}",
            f"{r.flops_per_response / 1e9:.0f}",
            f"{r.forwards_per_response:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
