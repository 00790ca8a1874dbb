"""Per-key limit on completions running at once (on this replica).

A request takes a :class:`Lease` before it is queued and gives it back when its
response is complete (streams: when the stream ends, however it ends). Over the
limit it gets 429 with ``Retry-After`` and these headers:

    x-ratelimit-limit-concurrent-requests      the limit
    x-ratelimit-remaining-concurrent-requests  0

The count is per replica (it lives in this process: a crashed replica leaks no
slots); behind a load balancer a key may hold up to limit x replicas.
"""

from __future__ import annotations

import threading
from collections import Counter

from app.errors import APIError

LIMIT_HEADER = "x-ratelimit-limit-concurrent-requests"
REMAINING_HEADER = "x-ratelimit-remaining-concurrent-requests"


class Lease:
    """One running request of one key; :meth:`release` is idempotent."""

    def __init__(self, limiter: InFlightLimiter, key_id: str) -> None:
        self._limiter = limiter
        self._key_id = key_id
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._limiter._release(self._key_id)


class InFlightLimiter:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        """0: no limit."""
        self._lock = threading.Lock()
        self._running: Counter[str] = Counter()

    def running(self, key_id: str) -> int:
        with self._lock:
            return self._running[key_id]

    def acquire(self, key_id: str) -> Lease:
        """A lease for one more request of ``key_id``; APIError 429 when it already has ``limit`` running."""
        with self._lock:
            if self.limit and self._running[key_id] >= self.limit:
                raise APIError(
                    429,
                    f"this API key already has {self.limit} requests in flight, the most allowed at once; "
                    "retry when one of them has finished",
                    type="rate_limit_error",
                    code="too_many_requests_in_flight",
                    headers={"Retry-After": "1", LIMIT_HEADER: str(self.limit), REMAINING_HEADER: "0"},
                )
            self._running[key_id] += 1
        return Lease(self, key_id)

    def _release(self, key_id: str) -> None:
        with self._lock:
            self._running[key_id] -= 1
            if self._running[key_id] <= 0:
                del self._running[key_id]
