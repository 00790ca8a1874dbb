"""Remote VAS against vLLM on this machine: speed, upstream calls per token and acceptance, beside local VAS.

    python bench/remote.py                          # starts vLLM (scripts/vllm.sh) on the embedded model
    python bench/remote.py --url http://127.0.0.1:8100 --model smollm2 --rounds 2 --json out.json

For every chunk length L (``--chunks``; ``auto`` is the adaptive rule) and beta (``--betas``), the same
prompts (``--prompts`` eval prompts, decoded together as one batch) are answered by the remote engine
(vLLM proposes, the shipped head steers here) and, in the same run, by the local engine's VAS with the
same head and beta. Configurations are interleaved round by round; the table shows medians.

Columns: completion tokens/s (wall time of the batch), upstream calls per generated token, acceptance
(proposed tokens accepted as they were, per tested position: accepted / (accepted + rejections), each
rejection giving one replacement token), and the ratio to local VAS tokens/s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from bench.servers import start_vllm
from personalize.data import load_prompts
from personalize.decoding import Engine, GenerationRequest, Personalization, SamplingParams
from personalize.heads import SHIPPED_HEADS_DIR, load_head
from personalize.models import load_base_model
from personalize.remote.engine import RemoteEngine
from personalize.remote.upstream import OpenAIUpstream

ROOT = Path(__file__).resolve().parents[1]


def run(engine: Any, prompts: list[tuple[int, ...]], personalization: Personalization, tokens: int) -> dict[str, float]:
    requests = [
        GenerationRequest(p, SamplingParams(max_new_tokens=tokens, seed=i), personalization)
        for i, p in enumerate(prompts)
    ]
    start = time.perf_counter()
    results = engine.generate(requests)
    wall = time.perf_counter() - start
    generated = sum(r.completion_tokens for r in results)
    calls = sum(r.compute.upstream_calls for r in results)
    accepted = sum(r.compute.accepted_tokens for r in results)
    rejections = max(generated - accepted, 0)
    return {
        "tokens_per_s": generated / wall,
        "calls_per_token": calls / generated if generated else float("nan"),
        "acceptance": accepted / (accepted + rejections) if accepted + rejections else float("nan"),
        "mean_tokens": generated / len(results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=None, help="a running upstream (default: start vLLM here)")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("PERSONALIZE_DATA_DIR", ".data")))
    parser.add_argument("--objective", default="concise")
    parser.add_argument("--betas", default="0.5,1,2")
    parser.add_argument("--chunks", default="1,4,8,16,auto")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    server = None if args.url else start_vllm(args.data_dir, args.model, args.port)
    try:
        measure(args, server.url if server is not None else args.url)
    finally:
        if server is not None:
            server.stop()


def measure(args: argparse.Namespace, url: str) -> None:
    base = load_base_model(None, data_dir=args.data_dir)
    head = load_head(SHIPPED_HEADS_DIR / args.objective, base)
    local = Engine(base, [head])
    remote = RemoteEngine(local, OpenAIUpstream(url, args.model))
    prompts = [tuple(base.encode_prompt(p.prompt)) for p in load_prompts("eval")[: args.prompts]]
    betas = [float(b) for b in args.betas.split(",")]
    chunks: list[int | None] = [None if c == "auto" else int(c) for c in args.chunks.split(",")]
    configs: dict[str, tuple[Any, Personalization]] = {}
    for beta in betas:
        weights = {args.objective: 1.0}
        configs[f"local VAS, beta {beta:g}"] = (local, Personalization(weights, beta=beta))
        for chunk in chunks:
            label = f"remote VAS, beta {beta:g}, L {chunk or 'auto'}"
            configs[label] = (remote, Personalization(weights, beta=beta, chunk_tokens=chunk))
    configs["remote base (pass-through)"] = (remote, Personalization({}, method="base"))
    configs["local base"] = (local, Personalization({}, method="base"))
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in configs}
    for _ in range(args.rounds):
        for name, (engine, personalization) in configs.items():
            samples[name].append(run(engine, prompts, personalization, args.tokens))
    report(args, samples, base.device)


def report(args: argparse.Namespace, samples: dict[str, list[dict[str, float]]], device: torch.device) -> None:
    def med(name: str, key: str) -> float:
        return statistics.median(s[key] for s in samples[name])

    print(
        f"\n{args.prompts} eval prompts x {args.tokens} tokens, {args.rounds} rounds, objective {args.objective}, "
        f"local device {device.type}, threads {torch.get_num_threads()}"
    )
    print(f"{'configuration':<36} {'tok/s':>7} {'spread':>13} {'calls/tok':>9} {'accept':>7} {'x local':>8}")
    rows = []
    for name in samples:
        tps = [s["tokens_per_s"] for s in samples[name]]
        beta = name.split("beta ")[1].split(",")[0] if "beta" in name else None
        local_name = f"local VAS, beta {beta}" if beta else "local base"
        ratio = med(name, "tokens_per_s") / med(local_name, "tokens_per_s")
        print(
            f"{name:<36} {statistics.median(tps):>7.1f} {min(tps):>6.1f}-{max(tps):<6.1f} "
            f"{med(name, 'calls_per_token'):>9.2f} {med(name, 'acceptance'):>7.2f} {ratio:>8.2f}"
        )
        rows.append(
            {
                "config": name,
                "tokens_per_s": tps,
                "calls_per_token": med(name, "calls_per_token"),
                "acceptance": med(name, "acceptance"),
                "ratio_to_local": ratio,
            }
        )
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
