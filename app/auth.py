"""API key authentication with a short per-replica cache.

A key that authenticated is remembered for ``fresh_s`` seconds: requests in that
window need no database read. Past it the key is checked again; if the database
cannot be reached, a remembered key keeps working until ``stale_s`` seconds after
its last successful check, so a short database outage does not stop traffic.

Revocation wins over the cache:

- the replica that revokes or rotates a key forgets that user's cached keys
  before it answers, so the old key gets 401 there at once;
- it announces the change on Redis (:mod:`personalize.key_events`); every other
  replica forgets that user's keys when the notice arrives (milliseconds);
- whatever happens to the notice (Redis down, a listener reconnecting: it then
  forgets every key), no replica uses a cached key more than ``stale_s`` seconds
  (at most 30) after it last saw it valid in the database, so a key revoked at
  time t is refused everywhere by t + ``stale_s`` (t + ``fresh_s`` while the
  database is reachable);
- an expiry is checked on every request against the clock, cached or not.

A result read from the database while a change notice arrived is not cached (a
generation counter), so a notice cannot be undone by a read that raced it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.exc import SQLAlchemyError

from personalize.db.keys import ApiKeyStore, hash_api_key
from personalize.db.models import utcnow
from personalize.db.records import KeyGrant

MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class _Entry:
    grant: KeyGrant
    checked: float
    """Monotonic time of the last successful database check."""


class AuthCache:
    """Authenticate keys through a short-lived cache over :class:`ApiKeyStore` (thread-safe)."""

    def __init__(
        self,
        keys: ApiKeyStore,
        *,
        fresh_s: float,
        stale_s: float,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self.keys = keys
        self.fresh_s = fresh_s
        self.stale_s = max(stale_s, fresh_s)
        self._clock = clock
        self._now = now
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._generation = 0
        self.stale_hits = 0
        """Requests let in on a remembered key while the database could not be reached."""

    def authenticate(self, api_key: str) -> KeyGrant | None:
        """The grant for ``api_key``, or None if it does not work; raises SQLAlchemyError when the
        database is unreachable and the key was not seen valid in the last ``stale_s`` seconds."""
        digest = hash_api_key(api_key)
        with self._lock:
            entry = self._entries.get(digest)
            generation = self._generation
        if entry is not None and self._expired(entry.grant):
            entry = None
        if entry is not None and self._clock() - entry.checked < self.fresh_s:
            return entry.grant
        checked = self._clock()
        try:
            grant = self.keys.authenticate(api_key)
        except SQLAlchemyError:
            if entry is not None and self._clock() - entry.checked < self.stale_s:
                with self._lock:
                    self.stale_hits += 1
                return entry.grant
            raise
        with self._lock:
            if grant is None:
                self._entries.pop(digest, None)
            elif generation == self._generation and self.fresh_s > 0:
                if len(self._entries) >= MAX_ENTRIES:
                    self._entries.pop(next(iter(self._entries)))
                self._entries[digest] = _Entry(grant, checked)
        return grant

    def forget_user(self, user_id: str | None) -> None:
        """Drop the cached keys of ``user_id`` (None: of everyone)."""
        with self._lock:
            self._generation += 1
            if user_id is None:
                self._entries.clear()
                return
            for digest in [d for d, e in self._entries.items() if e.grant.user.id == user_id]:
                del self._entries[digest]

    def _expired(self, grant: KeyGrant) -> bool:
        return grant.expires_at is not None and grant.expires_at <= self._now()
