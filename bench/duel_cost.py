"""What a duel costs to decode: 8 answers (4 candidates x 2) against 16 (4 x 4), through the service's scheduler.

    PERSONALIZE_THREADS=2 HF_HUB_OFFLINE=1 python -m bench.duel_cost            # 5 rounds, 64 tokens, 4 shapes
    python -m bench.duel_cost --rounds 7 --max-tokens 128 --json out.json

The embedded model and the shipped heads, as a duel decodes them: the candidate weights of a user with a few
comparisons (``candidate_weights`` around the profile's weights, step 2: every head steers every answer),
``samples`` answers of each with different seeds, all submitted at once to a
:class:`app.scheduler.Scheduler` with the given batch limits, timed until the last answer ends. Each round
runs every configuration once on the same eval prompt (the order rotating), so the configurations are
compared on the same prompts and the same machine load; the report gives medians over rounds and each
configuration's median ratio to the first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.scheduler import Scheduler
from bench.feedback import Setup, load_setup
from personalize.data import load_prompts, prompt_ids
from personalize.decoding import GenerationRequest, Personalization, SamplingParams
from personalize.decoding.config import DEFAULT_BETA
from personalize.feedback import candidate_weights, decoder_weights, fit_utility
from personalize.settings import Settings

COMPARISONS = 5
"""The comparisons of the simulated user whose duel is timed."""


@dataclass(frozen=True)
class Shape:
    """One configuration: the duel's size and the scheduler's batch limits."""

    candidates: int
    samples: int
    batch: int
    rows: int

    @property
    def label(self) -> str:
        return f"{self.candidates} x {self.samples} answers, batch {self.batch}, rows {self.rows}"


def parse_shape(text: str) -> Shape:
    """``CxS@B/R``: C candidates x S samples, max_batch_size B, max_batch_rows R."""
    try:
        size, limits = text.split("@")
        candidates, samples = (int(x) for x in size.split("x"))
        batch, rows = (int(x) for x in limits.split("/"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"a shape is CxS@B/R (e.g. 4x2@8/64), got {text!r}") from exc
    if min(candidates, samples, batch, rows) < 1 or candidates < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: candidates >= 2, samples, batch and rows >= 1")
    return Shape(candidates, samples, batch, rows)


def duel_requests(setup: Setup, prompt: str, shape: Shape, max_tokens: int, seed: int) -> list[GenerationRequest]:
    """The requests a duel of a user with a few comparisons would submit: the fit of ``COMPARISONS`` random
    reward differences, the profile's weights its decoder weights, the candidates around them (so that every
    candidate, as in most duels, is steered by every head; a first duel's, along one objective each, is lighter)."""
    k = len(setup.objectives)
    rng = np.random.default_rng(seed)
    differences = rng.standard_normal((COMPARISONS, k)) * setup.spreads  # (N, K) reward units
    fit = fit_utility(setup.objectives, differences, fallback_spread=setup.spreads)
    center = decoder_weights(fit.utility, setup.scales, strength=1.0)  # (K,)
    step = Settings().duel_step
    weights = candidate_weights(fit, center, shape.candidates, step=step, rng=rng)
    ids = tuple(prompt_ids(setup.engine.base, prompt))
    requests: list[GenerationRequest] = []
    for row in weights:  # (K,)
        named = {name: float(w) for name, w in zip(setup.objectives, row, strict=True)}
        personalization = Personalization(weights=named, beta=DEFAULT_BETA, method="vas")
        for _ in range(shape.samples):
            sampling = SamplingParams(max_new_tokens=max_tokens, temperature=1.0, seed=seed + len(requests))
            requests.append(GenerationRequest(ids, sampling, personalization))
    return requests


async def decode(scheduler: Scheduler, requests: Sequence[GenerationRequest]) -> tuple[float, int]:
    """(seconds until every answer ended, tokens generated)."""

    async def drain(request: GenerationRequest) -> int:
        tokens = 0
        async for event in scheduler.submit(request).iter_events():
            tokens += event.token_id >= 0
        return tokens

    start = time.perf_counter()
    counts = await asyncio.gather(*map(drain, requests))
    return time.perf_counter() - start, sum(counts)


def run(setup: Setup, shapes: Sequence[Shape], prompts: Sequence[str], args: argparse.Namespace) -> dict[str, list]:
    """Per shape (in the order given): seconds and tokens of each counted round."""
    seconds: list[list[float]] = [[] for _ in shapes]
    tokens: list[list[int]] = [[] for _ in shapes]
    schedulers = [
        Scheduler(setup.engine, max_queue=256, max_batch_size=shape.batch, max_batch_rows=shape.rows)
        for shape in shapes
    ]
    for scheduler in schedulers:
        scheduler.start()
    try:
        for round_ in range(args.rounds + 1):  # round 0 warms up, not counted
            prompt = prompts[round_ % len(prompts)]
            for offset in range(len(shapes)):  # the order rotates from round to round
                i = (round_ + offset) % len(shapes)
                requests = duel_requests(setup, prompt, shapes[i], args.max_tokens, seed=1000 * round_)
                took, count = asyncio.run(decode(schedulers[i], requests))
                if round_:
                    seconds[i].append(took)
                    tokens[i].append(count)
                    print(f"round {round_}: {shapes[i].label}: {took:.2f} s, {count} tokens", flush=True)
    finally:
        for scheduler in schedulers:
            scheduler.stop()
    return {"seconds": seconds, "tokens": tokens}


def report(shapes: Sequence[Shape], measured: dict[str, list], args: argparse.Namespace) -> str:
    first = measured["seconds"][0]
    lines = [
        f"duel decode time, {args.rounds} rounds, {args.max_tokens} tokens per answer, medians "
        f"({platform.processor() or platform.machine()}):",
        "",
        "| duel | seconds | tokens/s | time vs the first (median of per-round ratios) |",
        "|---|---:|---:|---:|",
    ]
    for shape, seconds, tokens in zip(shapes, measured["seconds"], measured["tokens"], strict=True):
        rate = statistics.median(t / s for t, s in zip(tokens, seconds, strict=True))
        ratio = statistics.median(s / f for s, f in zip(seconds, first, strict=True))
        lines.append(f"| {shape.label} | {statistics.median(seconds):.2f} | {rate:.1f} | {ratio:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--shapes",
        nargs="+",
        type=parse_shape,
        default=[parse_shape(s) for s in ("4x2@8/64", "4x4@8/64", "4x4@16/64", "4x4@16/96")],
        help="configurations CxS@B/R: C candidates x S answers each, max_batch_size B, max_batch_rows R "
        "(the first is the baseline of the ratios)",
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("PERSONALIZE_THREADS", "2")))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    setup = load_setup(args.threads)
    every = [p.prompt for p in load_prompts("eval")]
    prompts = every[:: max(1, len(every) // 8)]
    measured = run(setup, args.shapes, prompts, args)
    text = report(args.shapes, measured, args)
    print(text)
    if args.json:
        shapes = [s.label for s in args.shapes]
        args.json.write_text(json.dumps({"shapes": shapes, **measured, "max_tokens": args.max_tokens}, indent=2))


if __name__ == "__main__":
    main()
