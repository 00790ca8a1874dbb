"""What each part of the decoder buys, A/B in one process: dtype, shared lower layers, prefill batching.

    python bench/steps.py                         # embedded model; about 5 minutes here
    python bench/steps.py --rounds 5 --json out.json

Every configuration runs on the same base model, interleaved round by round, so the machine's noise
hits them alike; the table shows medians and the ratio of each B to its A:

- **dtype**: per-token time of plain decoding and of VAS with 3 LoRA heads (top 8 layers, as the
  shipped heads), batch 1 and batch 8, float32 against bfloat16 (oneDNN-packed weights on CPUs with
  AVX512-BF16/AMX; tensor cores on CUDA);
- **shared lower layers**: VAS with 3 top-8-layer heads, every row through every layer against the
  lower layers run once per sequence;
- **prefill batching**: 8 prompts' time to first token, one request after another against all 8
  prefilled in shared forwards;
- **OpenMP waits**: plain decoding at batch 1 in a fresh process whose idle OpenMP threads spin
  (``OMP_WAIT_POLICY=ACTIVE``) against sleep (``PASSIVE``), on a quiet machine and beside one busy
  process (a pure-Python loop, as any other busy service would be).

It also prints the batch-1 bound that memory bandwidth puts on a step (every weight read once per
token) beside the measured plain step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench.decode import OBJECTIVES, random_head
from bench.servers import PROMPTS
from bench.vs_vllm import bandwidth_gb_s
from personalize.decoding import Engine, GenerationRequest, Personalization, SamplingParams
from personalize.models import BaseModel, load_base_model

VAS3 = {f"{name}-top": 1.0 for name in OBJECTIVES[:3]}


def per_token(engine: Engine, requests: list[GenerationRequest], tokens: int) -> float:
    """Seconds per decode step: the batch's wall time over ``tokens`` steps less its prefill's."""
    start = time.perf_counter()
    engine.generate(requests)
    total = time.perf_counter() - start
    first = [GenerationRequest(r.prompt_ids, _sampling(1), r.personalization) for r in requests]
    start = time.perf_counter()
    engine.generate(first)
    prefill = time.perf_counter() - start
    return max(total - prefill, 0.0) / max(tokens - 1, 1)


def _sampling(tokens: int) -> SamplingParams:
    return SamplingParams(max_new_tokens=tokens, temperature=1.0, seed=0, ignore_eos=True)


def first_tokens(engine: Engine, prompts: list[tuple[int, ...]], together: bool) -> float:
    """Seconds until every prompt has its first token: prefilled together, or one request at a time."""
    requests = [GenerationRequest(ids, _sampling(1), Personalization({}, method="base")) for ids in prompts]
    start = time.perf_counter()
    if together:
        engine.generate(requests)
    else:
        for request in requests:
            engine.generate([request])
    return time.perf_counter() - start


def configurations(base: BaseModel, tokens: int) -> dict[str, tuple[Callable[[], float], Callable[[], float]]]:
    """Name -> (A, B), each a callable returning seconds."""
    heads = [random_head(base, f"{n}-top", "lora", seed=i + 21, top_layers=8) for i, n in enumerate(OBJECTIVES)]
    fp32 = Engine(base, heads, dtype=torch.float32)
    bf16 = Engine(base, heads, dtype=torch.bfloat16)
    unshared = Engine(base, heads, dtype=torch.bfloat16, share_layers=False)
    prompts = [tuple(base.encode_prompt(p)) for p in PROMPTS[:8]]

    def batch(weights: dict[str, float], size: int) -> list[GenerationRequest]:
        method = "vas" if weights else "base"
        return [
            GenerationRequest(prompts[i], _sampling(tokens), Personalization(weights, method=method))
            for i in range(size)
        ]

    def step(engine: Engine, weights: dict[str, float], size: int) -> Callable[[], float]:
        return lambda: per_token(engine, batch(weights, size), tokens)

    return {
        "plain, batch 1: float32 -> bfloat16": (step(fp32, {}, 1), step(bf16, {}, 1)),
        "VAS 3 heads, batch 1: float32 -> bfloat16": (step(fp32, VAS3, 1), step(bf16, VAS3, 1)),
        "VAS 3 heads, batch 8: float32 -> bfloat16": (step(fp32, VAS3, 8), step(bf16, VAS3, 8)),
        "VAS 3 heads, batch 8: every layer per row -> lower layers shared": (
            step(unshared, VAS3, 8),
            step(bf16, VAS3, 8),
        ),
        "8 prompts' first tokens: one by one -> prefilled together": (
            lambda: first_tokens(bf16, prompts, together=False),
            lambda: first_tokens(bf16, prompts, together=True),
        ),
    }


def child(data_dir: Path, tokens: int) -> None:
    """In a fresh process (its OpenMP set up from its environment): print plain decoding's ms/token."""
    base = load_base_model(None, data_dir=data_dir, device="cpu")
    engine = Engine(base)
    request = GenerationRequest(tuple(base.encode_prompt(PROMPTS[0])), _sampling(tokens), Personalization({}))
    engine.generate([request])
    print(statistics.median(per_token(engine, [request], tokens) for _ in range(3)) * 1e3)


def in_process(policy: str, data_dir: Path, tokens: int, busy: bool) -> Callable[[], float]:
    """Seconds per token of :func:`child` under ``OMP_WAIT_POLICY=policy``, beside a busy process or not."""

    def run() -> float:
        burner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        try:
            env = {**os.environ, "OMP_WAIT_POLICY": policy}
            command = [sys.executable, "-m", "bench.steps", "--child", "--data-dir", str(data_dir)]
            out = subprocess.run([*command, "--tokens", str(tokens)], env=env, capture_output=True, text=True)
            return float(out.stdout.strip().splitlines()[-1]) / 1e3
        finally:
            if burner is not None:
                burner.kill()
                burner.wait()

    return run


def waits(data_dir: Path, tokens: int) -> dict[str, tuple[Callable[[], float], Callable[[], float]]]:
    return {
        f"plain, batch 1, {where}: OpenMP waits spin -> sleep": (
            in_process("ACTIVE", data_dir, tokens, busy),
            in_process("PASSIVE", data_dir, tokens, busy),
        )
        for where, busy in (("quiet", False), ("beside a busy process", True))
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path(".data"))
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.data_dir, args.tokens)
    base = load_base_model(None, data_dir=args.data_dir, device="cpu", dtype=torch.float32)
    configs = {**configurations(base, args.tokens), **waits(args.data_dir, args.tokens)}
    for a, b in configs.values():  # warm-up (bf16 weights are packed on first use)
        a(), b()
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in configs}
    for _ in range(args.rounds):
        for name, (a, b) in configs.items():
            times[name][0].append(a())
            times[name][1].append(b())
    rows = []
    print(f"\n{'A -> B':<66} {'A ms':>9} {'B ms':>9} {'A/B':>6}")
    for name, (a_times, b_times) in times.items():
        a_med, b_med = statistics.median(a_times) * 1e3, statistics.median(b_times) * 1e3
        rows.append({"config": name, "a_ms": a_med, "b_ms": b_med, "speedup": a_med / b_med})
        print(f"{name:<66} {a_med:>9.1f} {b_med:>9.1f} {a_med / b_med:>6.2f}")
    gb_s = bandwidth_gb_s()
    weight_bytes = sum(p.numel() * 2 for p in base.model.parameters())
    bound_ms = weight_bytes / (gb_s * 1e9) * 1e3
    mb = weight_bytes / 1e6
    print(f"\nmemory bandwidth {gb_s:.1f} GB/s; bf16 weights {mb:.0f} MB: batch-1 step >= {bound_ms:.1f} ms")
    print(f"(threads {torch.get_num_threads()}, {args.rounds} rounds, {args.tokens} tokens)")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "bandwidth_gb_s": gb_s, "bound_ms": bound_ms}, indent=2))


if __name__ == "__main__":
    main()
