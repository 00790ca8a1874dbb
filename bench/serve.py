"""Serving throughput: 8 concurrent clients with different weight vectors vs one client alone.

    python bench/serve.py                          # embedded SmolLM2-135M, CPU or CUDA
    python bench/serve.py --clients 8 --requests 2 --tokens 48 --json out.json

Starts the real service in this process (SQLite in a temporary data dir, no
Redis) under uvicorn on a free local port, registers random LoRA heads through
the admin API, then measures completion tokens per second as the clients see
them over HTTP:

- alone: one client sends its requests one after another;
- concurrent: every client sends its requests one after another, all clients
  at once, each with its own weight vector, so the scheduler batches rows with
  different weights into shared decode steps.

The service decodes with ``max_tokens`` and ``seed`` fixed per request; the
tokens counted are the ``usage.completion_tokens`` the server reports.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import torch
import uvicorn

from app.main import create_app
from app.services import ModelBundle
from bench.decode import OBJECTIVES, random_head
from personalize.db import Database, UserStore
from personalize.decoding.engine import Engine
from personalize.heads import save_head
from personalize.models import BaseModel, load_base_model
from personalize.settings import Settings

PROMPTS = (
    "How do I clean my keyboard without damaging it?",
    "Give me three tips for sleeping better.",
    "What should I pack for a weekend hike?",
    "Explain what a value function is.",
)


def weight_vectors(clients: int, objectives: tuple[str, ...]) -> list[dict[str, float]]:
    """A different weight vector per client (cycling signs and strengths over the objectives)."""
    vectors = []
    for c in range(clients):
        vectors.append({name: round(((c + i) % 5 - 2) * 0.5, 2) for i, name in enumerate(objectives)})
    return vectors


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def run_client(
    client: httpx.AsyncClient, weights: dict[str, float], requests: int, tokens: int, seed: int
) -> int:
    produced = 0
    for r in range(requests):
        response = await client.post(
            "/v1/chat/completions",
            json={
                "model": "default",
                "messages": [{"role": "user", "content": PROMPTS[(seed + r) % len(PROMPTS)]}],
                "max_tokens": tokens,
                "seed": seed * 1000 + r,
                "personalization": {"weights": weights, "beta": 1.0},
            },
        )
        response.raise_for_status()
        produced += int(response.json()["usage"]["completion_tokens"])
    return produced


async def measure(url: str, key: str, vectors: list[dict[str, float]], requests: int, tokens: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=len(vectors) + 2)
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=600, limits=limits
    ) as client:
        start = time.perf_counter()
        counts = await asyncio.gather(*(run_client(client, w, requests, tokens, seed=i) for i, w in enumerate(vectors)))
        wall = time.perf_counter() - start
    total = sum(counts)
    return {"clients": len(vectors), "tokens": total, "seconds": wall, "tokens_per_s": total / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-model", default=None, help="hub id, local dir, or 'embedded' (default)")
    parser.add_argument("--data-dir", type=Path, default=Path.home() / ".local/share/personalize")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2, help="requests per client")
    parser.add_argument("--tokens", type=int, default=48, help="max_tokens per request")
    parser.add_argument("--heads", type=int, default=2, help="random LoRA heads to register (steer every row)")
    parser.add_argument(
        "--top-layers",
        type=int,
        default=8,
        help="the heads' LoRA covers only the top N layers, as the shipped heads' does (0: every layer)",
    )
    parser.add_argument("--rounds", type=int, default=2, help="alternating alone/concurrent rounds")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave default)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    base = load_base_model(args.base_model, data_dir=args.data_dir)
    objectives = OBJECTIVES[: args.heads]

    def factory(_settings: Settings) -> ModelBundle:
        return ModelBundle(base, Engine(base))

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            data_dir=Path(tmp),
            database_url=f"sqlite:///{tmp}/bench.db",
            redis_url=None,
            max_batch_size=args.clients,
            queue_size=args.clients * 4,
            max_tokens_limit=max(args.tokens, 1024),
            rate_limit_per_minute=0,
        )
        app = create_app(settings, engine_factory=factory)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{port}"
        try:
            key = start(url, settings, base, objectives, Path(tmp), top_layers=args.top_layers)
            vectors = weight_vectors(args.clients, objectives)
            alone, together = [], []
            for _ in range(args.rounds):
                alone.append(asyncio.run(measure(url, key, vectors[:1], args.requests, args.tokens)))
                together.append(asyncio.run(measure(url, key, vectors, args.requests, args.tokens)))
            scheduler = app.state.services.runtime.scheduler
            batches = {"batches": scheduler.batches_run, "largest": scheduler.largest_batch}
        finally:
            server.should_exit = True
            thread.join(30)

    single = statistics.median(r["tokens_per_s"] for r in alone)
    many = statistics.median(r["tokens_per_s"] for r in together)
    device = f"{base.device.type} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    depth = f"top {args.top_layers} layers" if args.top_layers else "every layer"
    print(f"model {base.backbone_id} on {device}; {len(objectives)} LoRA heads ({depth}) steering every request")
    print(f"{'clients':>8} {'tokens':>8} {'seconds':>8} {'tokens/s':>9}")
    for r in alone + together:
        print(f"{r['clients']:>8} {r['tokens']:>8} {r['seconds']:>8.1f} {r['tokens_per_s']:>9.1f}")
    print(f"decoder batches: {batches['batches']}, largest {batches['largest']}")
    print(f"aggregate speed-up with {args.clients} clients: {many / single:.2f}x (median of {args.rounds} rounds)")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "device": device,
                    "model": base.backbone_id,
                    "heads": len(objectives),
                    "head_top_layers": args.top_layers,
                    "tokens": args.tokens,
                    "alone": alone,
                    "concurrent": together,
                    "speedup": many / single,
                    "batches": batches,
                },
                indent=2,
            )
        )


def start(
    url: str, settings: Settings, base: BaseModel, objectives: tuple[str, ...], tmp: Path, top_layers: int = 0
) -> str:
    """Wait for the server, create an admin and upload the heads; returns the admin key."""
    with httpx.Client(base_url=url, timeout=600) as client:
        deadline = time.monotonic() + 600
        while True:
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the server did not become ready")
            threading.Event().wait(0.1)
        db = Database(settings.database_url)
        try:
            key = UserStore(db).create("bench", "admin").api_key
        finally:
            db.dispose()
        for seed, name in enumerate(objectives):
            head = random_head(base, name, "lora", seed, top_layers=top_layers)
            directory = save_head(head, tmp / "heads" / name)
            files = [("files", (p.name, p.read_bytes())) for p in sorted(directory.iterdir())]
            response = client.post("/v1/objectives", files=files, headers={"Authorization": f"Bearer {key}"})
            response.raise_for_status()
    return key


if __name__ == "__main__":
    main()
