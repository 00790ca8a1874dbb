"""Soak: a server under steady mixed load for a long time; its memory must follow the live work.

    python bench/soak.py                             # 30 minutes, 8 clients, the embedded model
    python bench/soak.py --minutes 5 --json out.json

Prepares a fresh data directory (``personalize demo --prepare-only``: the embedded model, SQLite,
the shipped heads, a demo user), starts ``personalize serve`` on it as a child process, and runs
``--clients`` clients that each send their next request as soon as the last one returns, mixing:
plain completions, VAS with one head, streamed VAS chat with two or three heads and random
weights, and streamed requests whose client hangs up after a few tokens. Every 5 s it samples the
server's resident memory (``/proc/PID/status``) and the KV cache it reports in ``/metrics``.

Prints: the RSS slope by least squares after a warm-up (``--warmup-s``, default 60 s) in MB per
10 minutes (target < 50), completion tokens/s over the first and the last window (5 minutes, or a
third of a shorter run; target last >= 0.9x first), and the count of 5xx answers (target 0).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.servers import PROMPTS, create_user, start_personalize

OBJECTIVES = ("concise", "helpful", "harmless", "positive")


class Tally:
    """What the clients saw, shared across their threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tokens: list[tuple[float, int]] = []  # (time, completion tokens) per finished request
        self.statuses: dict[int, int] = {}
        self.errors: list[str] = []

    def done(self, status: int, tokens: int) -> None:
        with self.lock:
            self.statuses[status] = self.statuses.get(status, 0) + 1
            self.tokens.append((time.monotonic(), tokens))

    def failed(self, what: str) -> None:
        with self.lock:
            self.errors.append(what)


def _request(kind: str, rng: random.Random) -> tuple[str, dict[str, Any], bool]:
    """(path, body, streamed) for one request of ``kind``."""
    prompt = rng.choice(PROMPTS)
    if kind == "base":
        return (
            "/v1/completions",
            {"model": "default", "prompt": prompt, "max_tokens": 24, "personalization": {"method": "base"}},
            False,
        )
    if kind == "vas1":
        return (
            "/v1/completions",
            {"model": "default", "prompt": prompt, "max_tokens": 24, "personalization": {"weights": {"harmless": 1.0}}},
            False,
        )
    names = rng.sample(OBJECTIVES, rng.choice((2, 3)))
    weights = {name: round(rng.uniform(-1.0, 1.5), 2) for name in names}
    body = {
        "model": "default",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 32,
        "stream": True,
        "personalization": {"weights": weights},
    }
    return "/v1/chat/completions", body, True


def client_loop(url: str, key: str, seed: int, stop: threading.Event, tally: Tally) -> None:
    rng = random.Random(seed)
    kinds = ("base", "vas1", "stream", "hangup")
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as client:
        while not stop.is_set():
            kind = rng.choice(kinds)
            path, body, streamed = _request(kind, rng)
            try:
                if not streamed:
                    response = client.post(path, json=body)
                    tokens = response.json().get("usage", {}).get("completion_tokens", 0) if response.is_success else 0
                    tally.done(response.status_code, tokens)
                    continue
                with client.stream("POST", path, json=body) as response:
                    tokens = 0
                    for line in response.iter_lines():
                        if line.startswith("data: {"):
                            tokens += 1
                            if kind == "hangup" and tokens >= 3:
                                break  # the client goes away mid-answer
                    tally.done(response.status_code, tokens)
            except httpx.HTTPError as exc:
                tally.failed(f"{type(exc).__name__}: {exc}")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def kv_tokens(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith("personalize_kv_cache_tokens "):
            return float(line.split()[1])
    return float("nan")


def slope_mb_per_10min(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB), scaled to MB per 10 minutes."""
    if len(samples) < 3:
        return float("nan")
    xs, ys = [s[0] for s in samples], [s[1] for s in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    num = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    den = sum((x - mx) ** 2 for x in xs)
    return num / den * 600


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--warmup-s", type=float, default=60.0)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--data-dir", type=Path, default=None, help="default: a fresh temporary folder")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="personalize-soak-"))
    server = start_personalize(data_dir, args.port)
    url = server.url
    keys = [create_user(url, server.key, f"soak-{seed}") for seed in range(args.clients)]  # a key per client
    tally, stop = Tally(), threading.Event()
    threads = [
        threading.Thread(target=client_loop, args=(url, keys[seed], seed, stop, tally), daemon=True)
        for seed in range(args.clients)
    ]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    samples: list[tuple[float, float, float]] = []  # (seconds, RSS MB, KV tokens)
    try:
        while (elapsed := time.monotonic() - start) < args.minutes * 60:
            samples.append((elapsed, rss_mb(server.pid), kv_tokens(url)))
            time.sleep(5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(150)
        server.stop()
    report(args, samples, tally, start)


def report(args: argparse.Namespace, samples: list[tuple[float, float, float]], tally: Tally, start: float) -> None:
    duration = args.minutes * 60
    window = min(300.0, duration / 3)
    warm = [(t, rss) for t, rss, _ in samples if t >= args.warmup_s]
    slope = slope_mb_per_10min(warm)

    def rate(lo: float, hi: float) -> float:
        return sum(n for t, n in tally.tokens if lo <= t - start < hi) / (hi - lo)

    first, last = rate(0.0, window), rate(duration - window, duration)
    server_errors = sum(n for status, n in tally.statuses.items() if status >= 500)
    print(
        f"\nsoak: {args.minutes:g} min, {args.clients} clients, {len(tally.tokens)} requests, statuses {tally.statuses}"
    )
    print(
        f"RSS {samples[0][1]:.0f} -> {samples[-1][1]:.0f} MB; slope after {args.warmup_s:g} s: "
        f"{slope:+.1f} MB / 10 min (target < 50)"
    )
    print(
        f"KV cache tokens: max {max(s[2] for s in samples):.0f}, median {statistics.median(s[2] for s in samples):.0f}"
    )
    print(
        f"completion tokens/s: first {window / 60:g} min {first:.1f}, last {window / 60:g} min {last:.1f}, "
        f"ratio {last / first if first else float('nan'):.2f} (target >= 0.9)"
    )
    print(f"5xx answers: {server_errors}; client errors: {len(tally.errors)}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "minutes": args.minutes,
                    "clients": args.clients,
                    "requests": len(tally.tokens),
                    "statuses": tally.statuses,
                    "client_errors": tally.errors[:20],
                    "rss_slope_mb_per_10min": slope,
                    "tokens_per_s_first": first,
                    "tokens_per_s_last": last,
                    "samples": samples,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
