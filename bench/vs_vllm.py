"""personalize against vLLM's CPU build on the same machine, the same model, one run.

    python bench/vs_vllm.py                         # about 15 minutes here
    python bench/vs_vllm.py --rounds 3 --json out.json

Starts vLLM (scripts/vllm.sh, its own virtual environment) and ``personalize serve`` (a fresh data
directory with the shipped heads), both up during all rounds, and measures, round by round and
interleaved (vLLM plain, personalize base, personalize VAS with 3 LoRA heads):

- throughput: non-streamed ``/v1/chat/completions``, 8 fixed prompts, ``max_tokens`` 64, temperature 1,
  top-k 20 (vLLM with ``ignore_eos``; personalize answers as sampled), tokens/s = completion tokens /
  wall time, for 1 client (the 8 prompts one after another) and 8 clients (one prompt each, at once);
- latency: the same prompts streamed by one client: time to first token, inter-token latency p50/p99.

It also measures this machine's memory bandwidth (reading a 512 MB tensor) and prints the bound it puts
on a batch-1 step: every weight is read once per token, so tokens/s <= bandwidth / weight bytes.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import torch

from bench.servers import PROMPTS, Server, start_personalize, start_vllm

VAS_WEIGHTS = {"concise": 1.0, "harmless": 1.0, "positive": 1.0}


class Target:
    """One server configuration: where to send, with what body."""

    def __init__(self, name: str, server: Server, model: str, extra: dict[str, Any], key: str = "") -> None:
        self.name, self.server, self.model, self.extra = name, server, model, extra
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    def body(self, prompt: str, stream: bool = False) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 64,
            "temperature": 1.0,
            "top_k": 20,
            "stream": stream,
            **self.extra,
        }


def one(client: httpx.Client, target: Target, prompt: str) -> int:
    response = client.post(f"{target.server.url}/v1/chat/completions", json=target.body(prompt), headers=target.headers)
    response.raise_for_status()
    return int(response.json()["usage"]["completion_tokens"])


def throughput(target: Target, clients: int) -> float:
    """Completion tokens per second over the 8 prompts: one client in turn, or ``clients`` at once."""
    with httpx.Client(timeout=600) as client:
        start = time.perf_counter()
        if clients == 1:
            tokens = sum(one(client, target, p) for p in PROMPTS)
        else:
            with cf.ThreadPoolExecutor(clients) as pool:
                tokens = sum(pool.map(lambda p: one(client, target, p), PROMPTS[:clients] * (clients // 8 or 1)))
        return tokens / (time.perf_counter() - start)


def latencies(target: Target) -> tuple[list[float], list[float]]:
    """Streamed, one client: time to first token (s) per prompt, and every gap between tokens (s)."""
    ttft, itl = [], []
    with httpx.Client(timeout=600) as client:
        for prompt in PROMPTS:
            start = time.perf_counter()
            stamps = []
            body = target.body(prompt, stream=True)
            url = f"{target.server.url}/v1/chat/completions"
            with client.stream("POST", url, json=body, headers=target.headers) as response:
                for line in response.iter_lines():
                    if line.startswith("data: {") and '"content":' in line and '"content":""' not in line:
                        stamps.append(time.perf_counter())
            if stamps:
                ttft.append(stamps[0] - start)
                itl.extend(b - a for a, b in itertools.pairwise(stamps))
    return ttft, itl


def bandwidth_gb_s() -> float:
    """Best of 5 reads of a 512 MB float32 tensor (a sum: one streaming pass over memory)."""
    x = torch.ones(128 * 1024 * 1024)
    x.sum()
    best = min(_timed(x.sum) for _ in range(5))
    return x.numel() * 4 / best / 1e9


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=None, help="default: a fresh temporary folder")
    parser.add_argument("--vllm-port", type=int, default=8124)
    parser.add_argument("--port", type=int, default=8125)
    parser.add_argument("--threads", type=int, default=0, help="PERSONALIZE_THREADS for our server (0: default)")
    parser.add_argument("--omp-wait", default="", help="OMP_WAIT_POLICY for our server (default: the service's)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="personalize-vs-vllm-"))
    env = {"PERSONALIZE_THREADS": str(args.threads), **({"OMP_WAIT_POLICY": args.omp_wait} if args.omp_wait else {})}
    ours = start_personalize(data_dir, args.port, env)
    theirs = start_vllm(data_dir, "smollm2", args.vllm_port)
    try:
        targets = [
            Target("vLLM, plain", theirs, "smollm2", {"ignore_eos": True}),
            Target("personalize, base", ours, "default", {"personalization": {"method": "base"}}, ours.key),
            Target(
                "personalize, VAS 3 LoRA heads",
                ours,
                "default",
                {"personalization": {"weights": VAS_WEIGHTS}},
                ours.key,
            ),
        ]
        results = measure(targets, args.rounds)
        report(results, args, data_dir)
    finally:
        theirs.stop()
        ours.stop()


def measure(targets: list[Target], rounds: int) -> dict[str, dict[str, list[float]]]:
    for target in targets:  # warm-up: first requests pay one-off costs on both servers
        throughput(target, 1)
    results: dict[str, dict[str, list[float]]] = {
        t.name: {"1 client": [], "8 clients": [], "ttft": [], "itl": []} for t in targets
    }
    for _ in range(rounds):
        for target in targets:  # interleaved: the machine's noise hits every configuration alike
            results[target.name]["1 client"].append(throughput(target, 1))
            results[target.name]["8 clients"].append(throughput(target, 8))
            ttft, itl = latencies(target)
            results[target.name]["ttft"].extend(ttft)
            results[target.name]["itl"].extend(itl)
    return results


def report(results: dict[str, dict[str, list[float]]], args: argparse.Namespace, data_dir: Path) -> None:
    gb_s = bandwidth_gb_s()
    weights = 134_515_008 * 2  # SmolLM2-135M parameters in bf16
    bound = gb_s * 1e9 / weights
    vllm = {k: statistics.median(results["vLLM, plain"][k]) for k in ("1 client", "8 clients")}
    print(
        f"\nmemory bandwidth {gb_s:.1f} GB/s: batch-1 bound {bound:.0f} tokens/s for bf16 weights "
        f"({1000 / bound:.1f} ms per token); {args.rounds} interleaved rounds, medians (min-max); "
        f"personalize threads: {args.threads or 'default'}, OpenMP waits: {args.omp_wait or 'default'}"
    )
    print(
        f"{'server':<32} {'1 client':>18} {'x vLLM':>7} {'8 clients':>20} {'x vLLM':>7} "
        f"{'TTFT p50':>9} {'ITL p50':>8} {'ITL p99':>8}"
    )
    rows = []
    for name, figures in results.items():
        one_c, eight = figures["1 client"], figures["8 clients"]
        m1, m8 = statistics.median(one_c), statistics.median(eight)
        ttft, itl = figures["ttft"], figures["itl"]
        print(
            f"{name:<32} {m1:>7.1f} ({min(one_c):.1f}-{max(one_c):.1f}) {m1 / vllm['1 client']:>7.2f} "
            f"{m8:>8.1f} ({min(eight):.1f}-{max(eight):.1f}) {m8 / vllm['8 clients']:>7.2f} "
            f"{percentile(ttft, 0.5) * 1000:>7.0f}ms {percentile(itl, 0.5) * 1000:>6.1f}ms "
            f"{percentile(itl, 0.99) * 1000:>6.1f}ms"
        )
        rows.append(
            {
                "server": name,
                "one_client": one_c,
                "eight_clients": eight,
                "ratio_one": m1 / vllm["1 client"],
                "ratio_eight": m8 / vllm["8 clients"],
                "ttft_p50_ms": percentile(ttft, 0.5) * 1000,
                "itl_p50_ms": percentile(itl, 0.5) * 1000,
                "itl_p99_ms": percentile(itl, 0.99) * 1000,
            }
        )
    if args.json:
        args.json.write_text(json.dumps({"bandwidth_gb_s": gb_s, "bound_tokens_per_s": bound, "rows": rows}, indent=2))
    print(f"(servers' logs in {data_dir})")


if __name__ == "__main__":
    main()
