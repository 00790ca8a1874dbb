"""Load and checks the chaos campaign (bench/chaos.py) runs against a live server over HTTP."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Sample:
    at: float
    kind: str
    status: int
    """HTTP status, or 0 when the request got no answer (connection error, timeout)."""


@dataclass
class LoadLog:
    samples: list[Sample] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, status: int) -> None:
        with self.lock:
            self.samples.append(Sample(time.monotonic(), kind, status))

    def between(self, start: float, end: float) -> list[Sample]:
        with self.lock:
            return [s for s in self.samples if start <= s.at < end]

    def counts(self, start: float = 0.0, end: float = float("inf")) -> dict[str, dict[str, int]]:
        """kind -> status -> count, over [start, end)."""
        table: dict[str, Counter[str]] = {}
        for s in self.between(start, end):
            table.setdefault(s.kind, Counter())[str(s.status)] += 1
        return {kind: dict(sorted(c.items())) for kind, c in sorted(table.items())}


class Load:
    """``clients`` threads, each with its own user, cycling through chat, profile read, whoami, profile write."""

    def __init__(self, url: str, users: list[tuple[str, str]], max_tokens: int = 4) -> None:
        self.url = url
        self.users = users
        self.max_tokens = max_tokens
        self.log = LoadLog()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _client(self, user_id: str, key: str) -> None:
        headers = {"Authorization": f"Bearer {key}"}
        chat = {"messages": [{"role": "user", "content": "How do I clean my keyboard?"}], "max_tokens": self.max_tokens}
        calls: list[tuple[str, Callable[[httpx.Client], httpx.Response]]] = [
            ("chat", lambda c: c.post("/v1/chat/completions", json=chat, headers=headers)),
            ("profile_read", lambda c: c.get(f"/v1/users/{user_id}/profile", headers=headers)),
            ("whoami", lambda c: c.get("/v1/users/me", headers=headers)),
            ("profile_write", lambda c: c.put(f"/v1/users/{user_id}/profile", json={"beta": 1.5}, headers=headers)),
        ]
        with httpx.Client(base_url=self.url, timeout=30) as client:
            i = 0
            while not self._stop.is_set():
                kind, call = calls[i % len(calls)]
                try:
                    status = call(client).status_code
                except httpx.HTTPError:
                    status = 0
                self.log.add(kind, status)
                i += 1

    def start(self) -> Load:
        for user_id, key in self.users:
            thread = threading.Thread(target=self._client, args=(user_id, key), daemon=True)
            self._threads.append(thread)
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def wait_recovered(self, since: float, timeout_s: float = 120.0) -> float | None:
        """Seconds from ``since`` until every kind of request succeeded again (None: not within the timeout)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ok = {s.kind for s in self.log.between(since, time.monotonic()) if s.status == 200}
            if ok >= {"chat", "profile_read", "whoami", "profile_write"}:
                firsts = [
                    min(s.at for s in self.log.between(since, time.monotonic()) if s.kind == k and s.status == 200)
                    for k in ok
                ]
                return max(firsts) - since
            time.sleep(0.1)
        return None


def concurrent_writers(url: str, user_id: str, key: str, writers: int = 32, rounds: int = 5) -> dict[str, Any]:
    """``writers`` threads each doing ``rounds`` read-modify-writes of one profile with If-Match."""
    headers = {"Authorization": f"Bearer {key}"}
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    start = threading.Barrier(writers)

    def writer(n: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            start.wait()
            for r in range(rounds):
                read = client.get(f"/v1/users/{user_id}/profile", headers=headers)
                version = read.json()["version"] if read.status_code == 200 else 0
                body = {"beta": round(0.5 + (n * rounds + r) % 40 / 10, 1)}
                put = client.put(
                    f"/v1/users/{user_id}/profile", json=body, headers={**headers, "If-Match": f'"{version}"'}
                )
                with lock:
                    statuses[put.status_code] += 1

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    with httpx.Client(base_url=url, timeout=30) as client:
        final = client.get(f"/v1/users/{user_id}/profile", headers=headers).json()["version"]
    ok = statuses[200]
    return {
        "writers": writers,
        "attempts": writers * rounds,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "final_version": final,
        "successful_writes": ok,
        "version_is_one_plus_writes": final == 1 + ok,
        "only_200_409_429": set(statuses) <= {200, 409, 429},
    }
