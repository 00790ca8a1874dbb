"""Prometheus metrics: one registry per app (so two apps in one process do not collide)."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "personalize_http_requests",
            "HTTP requests by route and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "personalize_http_request_duration_seconds",
            "Time from request to the last byte of the response (streams included).",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.tokens = Counter(
            "personalize_tokens",
            "Tokens processed, by kind (prompt, completion).",
            ["kind"],
            registry=self.registry,
        )
        self.objective_requests = Counter(
            "personalize_objective_requests",
            "Generations steered by each objective.",
            ["objective"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "personalize_queue_depth",
            "Requests waiting for the decoder.",
            registry=self.registry,
        )
        self.kv_cache_tokens = Gauge(
            "personalize_kv_cache_tokens",
            "Positions the running batch's KV cache holds (each row above the shared layers, each sequence below).",
            registry=self.registry,
        )
        self.kv_cache_bytes = Gauge(
            "personalize_kv_cache_bytes",
            "Bytes the running batch's KV cache allocates.",
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "personalize_batch_size",
            "Requests live in the running batch, observed each time requests join it.",
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64),
        )
        self.rejected = Counter(
            "personalize_rejected_requests",
            "Requests refused before decoding, by reason.",
            ["reason"],
            registry=self.registry,
        )

    def track_queue(self, depth: Callable[[], float]) -> None:
        self.queue_depth.set_function(depth)

    def track_kv_cache(self, tokens: Callable[[], float], nbytes: Callable[[], float]) -> None:
        self.kv_cache_tokens.set_function(tokens)
        self.kv_cache_bytes.set_function(nbytes)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts every HTTP request and times it until its response is complete."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "GET")
            self.metrics.requests.labels(method, path, str(status)).inc()
            self.metrics.latency.labels(method, path).observe(time.perf_counter() - start)
