"""How much a heavy request slows a light one: the row budget's latency bound, measured.

    python bench/interference.py                       # embedded model, the default row budget
    python bench/interference.py --rows 32 --json out.json

A one-row request (plain sampling, 64 tokens) is decoded alone, then while a request of the maximum
size the row budget admits is decoding in the same running batch (Best-of-N with N = the budget's
rows less one: every sample a row). The light request's inter-token latency, p50 and p99 over its
tokens and ``--rounds`` rounds, alone and beside the heavy one, and their ratio (the stated bound:
p50 at most 2x). A joining prompt rides in a step as a chunk of at most ``--prefill-chunk`` tokens:
the p99 shows what such a step costs the others.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path

import torch

from personalize.decoding import Engine, GenerationRequest, Personalization, SamplingParams
from personalize.decoding.engine import PREFILL_CHUNK
from personalize.models import load_base_model
from personalize.settings import Settings

PROMPT = "How do I clean my keyboard without damaging it?"


def light_latencies(engine: Engine, heavy: GenerationRequest | None, tokens: int) -> list[float]:
    """Seconds between the light request's successive tokens (its first token left out)."""
    base = engine.base
    light = GenerationRequest(
        tuple(base.encode_prompt(PROMPT)),
        SamplingParams(max_new_tokens=tokens, seed=1, ignore_eos=True),
        Personalization({}, method="base"),
    )
    batch = engine.open_batch(reward=lambda prompts, texts: torch.zeros(len(texts)))
    if heavy is not None:
        batch.add([heavy])
        for _ in range(3):  # the heavy request is decoding when the light one arrives
            batch.emit()
            batch.advance()
    [index] = batch.add([light])
    stamps: list[float] = []
    while not batch.done:
        for event in batch.emit():
            if event.index == index:
                stamps.append(time.perf_counter())
        batch.advance()
        if stamps and len(stamps) >= tokens:
            break
    batch.close()
    return [b - a for a, b in itertools.pairwise(stamps[1:])]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=Settings().max_batch_rows, help="the row budget")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prefill-chunk", type=int, default=PREFILL_CHUNK)
    parser.add_argument("--data-dir", type=Path, default=Settings().data_dir)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    base = load_base_model(None, data_dir=args.data_dir)
    engine = Engine(base, prefill_chunk=args.prefill_chunk)
    n = max(1, args.rows - 1)  # the light request takes the last row
    heavy = GenerationRequest(
        tuple(base.encode_prompt(PROMPT)),
        SamplingParams(max_new_tokens=4 * args.tokens, seed=2, ignore_eos=True),
        Personalization({}, method="bon", best_of=min(n, 64)),
    )
    light_latencies(engine, heavy, 8)  # warm-up
    alone: list[float] = []
    beside: list[float] = []
    for _ in range(args.rounds):
        alone.extend(light_latencies(engine, None, args.tokens))
        beside.extend(light_latencies(engine, heavy, args.tokens))
    ratio = statistics.median(beside) / statistics.median(alone)
    print(
        f"\nrow budget {args.rows}: heavy request = best-of-{min(n, 64)} ({engine.cost(heavy).rows} rows); "
        f"dtype {engine.dtype}, threads {torch.get_num_threads()}, {args.rounds} rounds"
    )
    for label, values in (("alone", alone), ("beside the heavy one", beside)):
        p50, p99 = statistics.median(values) * 1000, percentile(values, 0.99) * 1000
        print(f"light request ITL {label:<22} p50 {p50:.1f} ms  p99 {p99:.1f} ms")
    print(f"p50 ratio {ratio:.2f} (bound: 2.0)")
    if args.json:
        args.json.write_text(json.dumps({"rows": args.rows, "alone": alone, "beside": beside, "ratio": ratio}))


if __name__ == "__main__":
    main()
