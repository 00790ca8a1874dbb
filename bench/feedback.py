"""How well pairwise feedback recovers a user's utility, with the real model and the shipped heads.

    PERSONALIZE_THREADS=2 python -m bench.feedback                  # 24 users, the shipped heads
    python -m bench.feedback --users 24 --prompts 16 --heldout 4 --max-tokens 64 --json out.json

1. A pool of answers: for every weight vector of a grid (0; then at each of ``--strengths``, default
   1 and 2: each objective alone at +-s, each pair of objectives at +-s/sqrt 2, in decoder units,
   beta 1) and every pool prompt (eval prompts), ``--pool-samples`` answers (default 4, different
   seeds) from the real engine, scored by every objective's reward.
   Generated once and kept on disk (``--cache``), so a rerun only decodes what is missing.
2. Simulated users: each has a hidden utility ``u*`` (a random unit direction over the objectives,
   in reward units) and chooses between two answers with probability
   ``sigmoid(u* . (r(a) - r(b)) / T)``, ``T`` = 0.5 x the std of ``u* . (r(a) - r(b))`` over all
   pairs of distinct grid vectors' first answers to the same prompt (65 x 64 / 2 pairs x 16 prompts
   with the default strengths).
3. Each user answers 40 comparisons, twice: with duels (the service's choice: ``--candidates``
   candidate weights, the profile's weights +- ``--duel-step`` along the directions of greatest
   posterior uncertainty, each taken as the closest grid vector in direction (then length) not taken
   yet; ``--samples`` of each one's pool answers to a random prompt (``--one-prompt``: always the user's
   own prompt, as the Teach page asks), drawn anew each duel as the service draws new seeds, and the
   user's kept answers to that prompt (``--keep``, as the service keeps them); the pair with the largest
   expected gain under the current fit not asked already, as the service picks it; ``--candidates 0``:
   the best pair among all the pool's answers to the prompt) and with random pairs of grid vectors (a
   random answer of each, on the same prompts). After each, the fit is redone as the service does it
   (prior zero, the heads' fallback spreads) and the profile takes the fitted weights; the cosine
   between the fitted ``utility`` and ``u*`` is recorded after 5, 10, 20 and 40 comparisons. With
   ``--also-samples S`` the duels run again with ``S`` answers per candidate (the same users and seeds),
   and the paired difference from the first duels is reported.
4. Learned vs default: the weights of each user (the first ``--steer-users``) after 40 duels and the
   default profile (no weights) answer held-out eval prompts (decoded for real); the gain is the paired
   difference of ``u* . r``.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import itertools
import json
import math
import os
import statistics
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from app.duel_memory import KeptAnswer, KeptDuels
from personalize.data import load_prompts, prompt_ids
from personalize.decoding import Engine, GenerationRequest, Personalization, SamplingParams
from personalize.feedback import (
    FitConfig,
    UtilityFit,
    candidate_weights,
    cosine,
    decoder_weights,
    fit_utility,
)
from personalize.heads import SHIPPED_HEADS_DIR, discover_heads, load_head
from personalize.models import load_base_model, set_threads
from personalize.rewards import get_reward
from personalize.settings import Settings

CHECKPOINTS = (5, 10, 20, 40)
ALSO = "duel-also"
"""The cosines of the duels rerun with ``--also-samples`` answers per candidate."""
T_CRIT_95 = {n: t for n, t in ((5, 2.776), (10, 2.262), (15, 2.145), (20, 2.093), (24, 2.069), (30, 2.045))}


def t_critical(n: int) -> float:
    """Two-sided 95% Student t for n samples (n - 1 degrees of freedom), from a short table."""
    keys = sorted(T_CRIT_95)
    return T_CRIT_95[min(keys, key=lambda k: abs(k - n))] if n < 60 else 1.96


def weight_grid(k: int, strengths: Sequence[float] = (1.0,)) -> np.ndarray:
    """(G, K): zero, then for each strength s: s * (+-e_i) and s * (+-e_i +- e_j) / sqrt 2 for i < j."""
    unit = _unit_grid(k)
    return np.concatenate([np.zeros((1, k))] + [s * unit for s in strengths])


def _unit_grid(k: int) -> np.ndarray:
    rows = []
    for i in range(k):
        for sign in (1.0, -1.0):
            rows.append(sign * np.eye(k)[i])
    for i, j in itertools.combinations(range(k), 2):
        for si, sj in itertools.product((1.0, -1.0), repeat=2):
            row = np.zeros(k)
            row[i], row[j] = si / math.sqrt(2), sj / math.sqrt(2)
            rows.append(row)
    return np.array(rows)


@dataclass
class Setup:
    engine: Engine
    objectives: tuple[str, ...]
    scales: np.ndarray
    spreads: np.ndarray
    rewards: dict[str, object]


def load_setup(threads: int) -> Setup:
    set_threads(threads)
    settings = Settings()
    base = load_base_model(settings.base_model, data_dir=settings.data_dir)
    heads = sorted((load_head(f, base) for f in discover_heads([SHIPPED_HEADS_DIR])), key=lambda h: h.objective)
    objectives = tuple(h.objective for h in heads)
    scales = np.array([h.meta.calibration.scale for h in heads])
    spreads = np.array([math.sqrt(2) * h.meta.calibration.return_std for h in heads])
    rewards = {h.objective: get_reward(h.meta.reward_name) for h in heads}
    return Setup(Engine(base, heads), objectives, scales, spreads, rewards)


class AnswerCache:
    """Answers and their rewards on disk, keyed by what made them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict[str, object]] = json.loads(path.read_text()) if path.exists() else {}

    @staticmethod
    def key(weights: Sequence[float], prompt: str, max_tokens: int, seed: int) -> str:
        text = json.dumps([[round(float(w), 4) for w in weights], prompt, max_tokens, seed])
        return hashlib.sha256(text.encode()).hexdigest()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.entries))
        tmp.replace(self.path)


def generate(
    setup: Setup, cache: AnswerCache, jobs: Sequence[tuple[np.ndarray, str, int]], max_tokens: int, batch: int
) -> list[np.ndarray]:
    """(K,) rewards of the answer to each (weights, prompt, sample) job, decoding (and caching) what is missing."""
    keys = [cache.key(w, p, max_tokens, sample) for w, p, sample in jobs]
    missing = [(key, w, p) for key, (w, p, _) in zip(keys, jobs, strict=True) if key not in cache.entries]
    start = time.perf_counter()
    for i in range(0, len(missing), batch):
        chunk = missing[i : i + batch]
        requests = []
        for key, w, p in chunk:
            weights = {n: float(x) for n, x in zip(setup.objectives, w, strict=True) if x != 0}
            sampling = SamplingParams(max_new_tokens=max_tokens, temperature=1.0, seed=int(key[:12], 16))
            ids = tuple(prompt_ids(setup.engine.base, p))
            requests.append(GenerationRequest(ids, sampling, Personalization(weights=weights, beta=1.0)))
        results = setup.engine.generate(requests)
        texts = [r.text for r in results]
        prompts = [p for _, _, p in chunk]
        scores = {n: [float(x) for x in fn(prompts, texts)] for n, fn in setup.rewards.items()}  # type: ignore[operator]
        for j, (key, _, _) in enumerate(chunk):
            cache.entries[key] = {"text": texts[j], "rewards": [scores[n][j] for n in setup.objectives]}
        cache.save()
        done = i + len(chunk)
        print(f"  decoded {done}/{len(missing)} ({(time.perf_counter() - start) / done:.2f} s/answer)", flush=True)
    return [np.array(cache.entries[key]["rewards"], dtype=np.float64) for key in keys]


class Answer(NamedTuple):
    vector: int
    """Row of the pool's grid."""
    sample: int
    """Which of its answers to the prompt."""


@dataclass
class Pool:
    grid: np.ndarray
    """(G, K) decoder weights."""
    rewards: np.ndarray
    """(G, P, S, K) reward of answer s of grid vector g to prompt p."""

    def answers(self, rows: Sequence[int], samples: int, rng: np.random.Generator) -> list[Answer]:
        """``samples`` answers of each grid vector in ``rows``, drawn among the pool's (a duel's fresh seeds)."""
        pooled = self.rewards.shape[2]
        return [Answer(g, int(s)) for g in rows for s in rng.choice(pooled, size=min(samples, pooled), replace=False)]

    def of(self, answer: Answer, prompt: int) -> np.ndarray:
        return self.rewards[answer.vector, prompt, answer.sample]


def snap(grid: np.ndarray, weights: np.ndarray, exclude: Collection[int] = ()) -> int:
    """The grid vector closest in direction to ``weights`` (the zero vector for a near-zero one), other
    than those in ``exclude``; among vectors of the same direction, the one closest in length."""
    length = float(np.linalg.norm(weights))
    if length < 0.25:
        return next(i for i in range(len(grid)) if i not in exclude)
    norms = np.linalg.norm(grid, axis=1)
    cos = (grid @ weights) / np.maximum(norms, 1e-12) / length
    score = np.round(cos, 9) - 1e-6 * np.abs(norms - length)  # direction first, then length
    score[norms == 0] = -np.inf
    score[list(exclude)] = -np.inf
    return int(np.argmax(score))


def candidates_of(grid: np.ndarray, weights: np.ndarray) -> list[int]:
    """Distinct grid vectors for candidate weights (C, K): each snapped in turn, avoiding those taken."""
    taken: list[int] = []
    for row in weights:
        taken.append(snap(grid, row, exclude=taken))
    return taken


def choose(u: np.ndarray, temperature: float, a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The chosen-minus-rejected reward difference of a simulated user's choice between a and b."""
    margin = float(u @ (a - b)) / temperature
    prefers_a = rng.random() < 1.0 / (1.0 + math.exp(-max(min(margin, 50.0), -50.0)))
    return a - b if prefers_a else b - a


def pick_duel(
    pool: Pool,
    fit: UtilityFit,
    weights: np.ndarray,
    prompt: int,
    kept: KeptDuels,
    args: argparse.Namespace,
    rng: np.random.Generator,
) -> tuple[tuple[np.ndarray, np.ndarray], KeptDuels]:
    """The service's duel: candidate weights around the profile (snapped to the grid), or every pool answer
    with ``--candidates 0``; of their answers to ``prompt`` (``--samples`` each) and the user's kept answers
    to it, the most informative pair not asked already. The two answers' rewards, and what the service's
    duel memory (app/duel_memory.py) keeps afterwards (``--keep``); a pool answer's text is its place in
    the pool."""
    if args.candidates:
        wanted = candidate_weights(fit, weights, args.candidates, step=args.duel_step, rng=rng)  # (C, K)
        rows = candidates_of(pool.grid, wanted)
    else:
        rows = list(range(len(pool.grid)))
    new = [
        KeptAnswer(f"{a.vector}/{a.sample}", None, {}, {}, tuple(map(float, pool.of(a, prompt))))
        for a in pool.answers(rows, args.samples, rng)
    ]
    rewards = np.array([a.rewards for a in (*kept.answers, *new)])  # (N + C, K)
    chosen = kept.choose(fit, new, rewards, args.keep)
    return (np.array(chosen.first.rewards), np.array(chosen.second.rewards)), chosen.kept


def random_pair(pool: Pool, rng: np.random.Generator) -> tuple[Answer, Answer]:
    """Two random grid vectors' answers (a random sample of each)."""
    first, second = (int(x) for x in rng.choice(len(pool.grid), size=2, replace=False))
    samples = pool.rewards.shape[2]
    return Answer(first, int(rng.integers(samples))), Answer(second, int(rng.integers(samples)))


def prompt_of(user: int, pool: Pool, args: argparse.Namespace, rng: np.random.Generator) -> int:
    """The prompt of a user's next comparison: a random one, or with ``--one-prompt`` always the user's own
    (user i: prompt i mod P, as the Teach page asks every duel about the prompt the user typed)."""
    prompts = pool.rewards.shape[1]
    draw = int(rng.integers(prompts))  # drawn either way: the same random stream in both modes
    return user % prompts if args.one_prompt else draw


def run_user(
    setup: Setup,
    pool: Pool,
    u: np.ndarray,
    temperature: float,
    strategy: str,
    seed: int,
    args: argparse.Namespace,
    user: int = 0,
) -> tuple[dict[int, float], np.ndarray]:
    """Cosines after each checkpoint, and the final decoder weights, for one user and one strategy."""
    rng = np.random.default_rng(seed)
    diffs: list[np.ndarray] = []
    weights = np.zeros(len(setup.objectives))
    fit = fit_utility(setup.objectives, np.zeros((0, len(setup.objectives))), fallback_spread=setup.spreads)
    out: dict[int, float] = {}
    kept: dict[int, KeptDuels] = {}
    for t in range(1, max(CHECKPOINTS) + 1):
        prompt = prompt_of(user, pool, args, rng)
        if strategy == "duel":
            memory = kept.get(prompt, KeptDuels())
            (left, right), kept[prompt] = pick_duel(pool, fit, weights, prompt, memory, args, rng)
        else:
            left, right = (pool.of(a, prompt) for a in random_pair(pool, rng))
        diffs.append(choose(u, temperature, left, right, rng))
        config = FitConfig(l2=args.l2)
        fit = fit_utility(setup.objectives, np.array(diffs), fallback_spread=setup.spreads, config=config)
        weights = decoder_weights(fit.utility, setup.scales, strength=1.0)
        if t in CHECKPOINTS:
            out[t] = cosine(fit.utility, u)
    return out, weights


def temperature_of(u: np.ndarray, pool: Pool) -> float:
    """0.5 x the std of u . (r(a) - r(b)) over all pairs of two different grid vectors' answers to the same
    prompt (the first sample of each: the same pairs whatever ``--samples``)."""
    g = pool.rewards.shape[0]
    first, second = np.triu_indices(g, k=1)
    margins = (pool.rewards[first, :, 0] - pool.rewards[second, :, 0]) @ u  # (pairs, P)
    return 0.5 * float(margins.std())


def summary(values: Sequence[float]) -> str:
    mean, sd = statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.3f} ± {sd:.3f} (min {min(values):.2f})"


def interval(values: Sequence[float]) -> str:
    mean = statistics.fmean(values)
    half = t_critical(len(values)) * statistics.stdev(values) / math.sqrt(len(values))
    return f"{mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}]"


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=24)
    parser.add_argument(
        "--steer-users",
        type=int,
        default=96,
        help="of the users, how many decode the held-out prompts for learned vs default (the first ones; 0: none)",
    )
    parser.add_argument("--prompts", type=int, default=16, help="pool prompts (eval split, spread over it)")
    parser.add_argument("--heldout", type=int, default=6, help="held-out prompts for learned vs default")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--strengths",
        type=lambda text: tuple(float(x) for x in text.split(",")),
        default=(1.0, 2.0),
        help="lengths of the pool's weight vectors (comma-separated; decoder units, beta 1)",
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=Settings().duel_shape[1],
        help="answers a duel generates per candidate weight vector (the service's duel_samples, as its in-flight "
        "limit lets it draw them)",
    )
    parser.add_argument(
        "--pool-samples",
        type=int,
        default=4,
        help="answers per weight vector and prompt in the pool; a duel draws --samples of them (fresh seeds, as "
        "the service's next duel generates new answers)",
    )
    parser.add_argument(
        "--also-samples",
        type=int,
        default=0,
        help="run the duels again with this many answers per candidate (the same users and seeds) and report "
        "the paired difference; 0: not",
    )
    parser.add_argument("--batch", type=int, default=24)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("PERSONALIZE_THREADS", "2")))
    parser.add_argument("--l2", type=float, default=FitConfig().l2)
    parser.add_argument("--duel-step", type=float, default=Settings().duel_step)
    parser.add_argument(
        "--candidates",
        type=int,
        default=Settings().duel_shape[0],
        help="candidate weight vectors per duel (the service's duel_candidates, as its in-flight limit lets it draw "
        "them); 0: every pool answer to the prompt",
    )
    parser.add_argument(
        "--keep",
        type=int,
        default=Settings().duel_keep,
        help="answers of a user's earlier duels on a prompt a duel also chooses among (the service's duel_keep)",
    )
    parser.add_argument(
        "--one-prompt",
        action="store_true",
        help="every comparison of a user on one prompt (user i: prompt i mod P), as the Teach page asks them",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=Path(Settings().data_dir) / "bench" / "feedback-answers.json")
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args()


def build_pool(setup: Setup, cache: AnswerCache, prompts: Sequence[str], args: argparse.Namespace) -> Pool:
    grid = weight_grid(len(setup.objectives), args.strengths)
    samples = max(args.pool_samples, args.samples)
    jobs = [(w, p, s) for w in grid for p in prompts for s in range(samples)]
    print(
        f"pool: {len(grid)} weight vectors x {len(prompts)} prompts x {samples} samples = {len(jobs)} answers",
        flush=True,
    )
    rewards = generate(setup, cache, jobs, args.max_tokens, args.batch)
    shape = (len(grid), len(prompts), samples, len(setup.objectives))
    return Pool(grid, np.array(rewards).reshape(shape))


def recovery(setup: Setup, pool: Pool, hidden: np.ndarray, args: argparse.Namespace) -> dict[str, object]:
    """Every user under both strategies (and the duels again with ``--also-samples``): cosines per
    checkpoint, learned weights after the duels."""
    runs = {"duel": args, "random": args}
    if args.also_samples:
        runs[ALSO] = argparse.Namespace(**{**vars(args), "samples": args.also_samples})
    cosines: dict[str, dict[int, list[float]]] = {s: {t: [] for t in CHECKPOINTS} for s in runs}
    learned = []
    for i, u in enumerate(hidden):
        temperature = temperature_of(u, pool)
        for name, settings in runs.items():
            strategy = "random" if name == "random" else "duel"
            seed = args.seed * 1000 + i
            found, weights = run_user(setup, pool, u, temperature, strategy, seed, settings, user=i)
            for t, c in found.items():
                cosines[name][t].append(c)
            if name == "duel":
                learned.append(weights)
    return {"cosines": cosines, "learned": learned}


def learned_vs_default(
    setup: Setup, cache: AnswerCache, hidden: np.ndarray, learned: Sequence[np.ndarray], prompts: Sequence[str], args
) -> list[float]:
    """Per user: mean over held-out prompts of u* . (r(learned answer) - r(default answer))."""
    zero = np.zeros(len(setup.objectives))
    jobs = [(zero, p, 0) for p in prompts] + [(w, p, 0) for w in learned for p in prompts]
    print(f"learned vs default: {len(jobs)} answers on {len(prompts)} held-out prompts", flush=True)
    rewards = generate(setup, cache, jobs, args.max_tokens, args.batch)
    default = np.array(rewards[: len(prompts)])  # (P, K)
    gains = []
    for i, u in enumerate(hidden):
        mine = np.array(rewards[len(prompts) * (i + 1) : len(prompts) * (i + 2)])  # (P, K)
        gains.append(float(((mine - default) @ u).mean()))
    return gains


def report(result: dict[str, object], gains: Sequence[float], args: argparse.Namespace, seconds: float) -> str:
    cos = result["cosines"]
    assert isinstance(cos, dict)
    lines = [
        f"feedback recovery: {args.users} simulated users, {args.prompts} pool prompts, max_tokens {args.max_tokens}, "
        f"l2 {args.l2}, seed {args.seed}, duel candidates {args.candidates or 'all pool answers'} x {args.samples}, "
        f"kept {args.keep}, {'one prompt per user' if args.one_prompt else 'a random prompt per comparison'}, "
        f"{seconds / 60:.1f} min",
        "",
        "| comparisons | duels: cosine mean ± sd (min) | random pairs: cosine mean ± sd (min) "
        "| duel − random (95% CI) |",
        "|---|---|---|---|",
    ]
    for t in CHECKPOINTS:
        paired = [a - b for a, b in zip(cos["duel"][t], cos["random"][t], strict=True)]
        lines.append(f"| {t} | {summary(cos['duel'][t])} | {summary(cos['random'][t])} | {interval(paired)} |")
    lines += [
        "",
        f"duels, mean cosine after 20 comparisons (95% CI over users): {interval(cos['duel'][20]).lstrip('+')}",
    ]
    if ALSO in cos:
        lines += [
            "",
            f"| comparisons | duels, {args.candidates} x {args.also_samples}: cosine mean ± sd (min) "
            f"| minus duels, {args.candidates} x {args.samples} (95% CI) |",
            "|---|---|---|",
        ]
        for t in CHECKPOINTS:
            paired = [a - b for a, b in zip(cos[ALSO][t], cos["duel"][t], strict=True)]
            lines.append(f"| {t} | {summary(cos[ALSO][t])} | {interval(paired)} |")
        lines += [
            "",
            f"duels, {args.candidates} x {args.also_samples}, mean cosine after 20 comparisons (95% CI over users): "
            f"{interval(cos[ALSO][20]).lstrip('+')}",
        ]
    if len(gains) > 1:
        lines += [
            "",
            f"learned (40 duels) vs default profile, u*·r per answer on {args.heldout} held-out prompts, paired "
            f"over users: {interval(gains)}; better for {sum(g > 0 for g in gains)}/{len(gains)} users",
        ]
    return "\n".join(lines)


def main() -> None:
    args = parse()
    started = time.perf_counter()
    setup = load_setup(args.threads)
    cache = AnswerCache(args.cache)
    every = [p.prompt for p in load_prompts("eval")]
    stride = max(1, len(every) // args.prompts)
    pool_prompts = every[::stride][: args.prompts]
    heldout = [p for p in every[stride // 2 :: stride] if p not in pool_prompts][: args.heldout]
    pool = build_pool(setup, cache, pool_prompts, args)
    rng = np.random.default_rng(args.seed)
    hidden = rng.standard_normal((args.users, len(setup.objectives)))
    hidden /= np.linalg.norm(hidden, axis=1, keepdims=True)
    result = recovery(setup, pool, hidden, args)
    learned = result["learned"]
    assert isinstance(learned, list)
    steered = min(args.steer_users, args.users)
    gains = learned_vs_default(setup, cache, hidden[:steered], learned[:steered], heldout, args) if steered else []
    table = report(result, gains, args, time.perf_counter() - started)
    print(f"\n{datetime.date.today().isoformat()} objectives {', '.join(setup.objectives)}\n{table}")
    if args.json:
        payload = {"cosines": result["cosines"], "gains": gains, "hidden": hidden.tolist(), "args": vars(args)}
        args.json.write_text(json.dumps(payload, indent=2, default=str))


if __name__ == "__main__":
    main()
