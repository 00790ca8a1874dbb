"""Redis, optional: profile cache, per-key rate limits and cross-replica head events.

Every operation degrades instead of failing: with no ``REDIS_URL``, or while Redis
is unreachable, profile reads go to the database, rate limits are counted in this
process, and head changes reach other replicas through their periodic database
sync. An outage is logged once when it starts and once when it ends; while Redis
is down, calls are skipped for ``retry_after_s`` so requests do not each wait on a
connect timeout.

Profiles are never served stale after a successful write: the writer overwrites
the cached entry with the new version (a Lua compare-and-set that never replaces
a newer version with an older one), and readers fill a missing entry only with
``SET NX``, so a reader that loaded the old row before the write cannot put it
back. If the write could not reach Redis, this process remembers the user and
deletes the entry before it trusts the cache again; the TTL bounds what other
replicas can see in that case.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal, TypeVar, cast

import redis

from personalize.db.errors import NotFoundError
from personalize.db.models import SOURCE_MANUAL
from personalize.db.profiles import ProfileStore
from personalize.db.records import ProfileRecord
from personalize.decoding.config import Personalization

log = logging.getLogger(__name__)

T = TypeVar("T")

# KEYS[1] = profile key; ARGV = payload, version, ttl. Replace only an older (or no) entry.
_SET_IF_NEWER = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, decoded = pcall(cjson.decode, current)
  if ok and tonumber(decoded['version']) and tonumber(decoded['version']) > tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[3]))
return 1
"""

HeadAction = Literal["activated", "deactivated", "deleted", "resync"]


@dataclass(frozen=True)
class HeadEvent:
    """A change to the active head set, announced to every replica."""

    action: HeadAction
    objective: str = ""
    version: str = ""
    origin: str = ""
    """The replica that made the change (it has already applied it)."""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, payload: str) -> HeadEvent:
        data = json.loads(payload)
        return cls(
            action=data["action"],
            objective=str(data.get("objective", "")),
            version=str(data.get("version", "")),
            origin=str(data.get("origin", "")),
        )


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    retry_after_s: int


class _LocalRateLimiter:
    """Fixed one-minute windows counted in this process (used while Redis is unavailable)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, int], int] = {}

    def hit(self, key: str, window: int) -> int:
        with self._lock:
            if len(self._counts) > 10_000:
                self._counts = {k: v for k, v in self._counts.items() if k[1] >= window}
            count = self._counts.get((key, window), 0) + 1
            self._counts[(key, window)] = count
            return count


class Cache:
    """Redis-backed helpers that keep working (from the database, in-process) without Redis."""

    def __init__(
        self,
        url: str | None,
        *,
        prefix: str = "personalize",
        profile_ttl_s: int = 300,
        retry_after_s: float = 2.0,
        timeout_s: float = 0.5,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.profile_ttl_s = profile_ttl_s
        self.retry_after_s = retry_after_s
        self._client: redis.Redis | None = None
        if url:
            self._client = redis.Redis.from_url(
                url,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                decode_responses=True,
            )
        self._down_until = 0.0
        self._down = False
        self._state_lock = threading.Lock()
        self._dirty_profiles: set[str] = set()
        self._local_limits = _LocalRateLimiter()

    # ---- availability ----------------------------------------------------------------
    @property
    def configured(self) -> bool:
        return self._client is not None

    @property
    def channel(self) -> str:
        return f"{self.prefix}:heads"

    def _call(self, what: str, fn: Callable[[redis.Redis], T], default: T) -> T:
        """Run ``fn`` against Redis, or return ``default`` if Redis is absent or failing."""
        client = self._client
        if client is None or time.monotonic() < self._down_until:
            return default
        try:
            result = fn(client)
        except redis.RedisError as exc:
            with self._state_lock:
                self._down_until = time.monotonic() + self.retry_after_s
                if not self._down:
                    self._down = True
                    log.warning("redis unavailable (%s: %s); serving from the database", what, exc)
            return default
        if self._down:
            with self._state_lock:
                if self._down:
                    self._down = False
                    log.warning("redis is reachable again")
        return result

    def ping(self) -> bool:
        return self._call("ping", lambda r: bool(r.ping()), False)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    # ---- profiles ----------------------------------------------------------------------
    def _profile_key(self, user_id: str) -> str:
        return f"{self.prefix}:profile:{user_id}"

    def _flush_dirty(self) -> bool:
        """Delete entries whose invalidation failed earlier; True when none is left."""
        if not self._dirty_profiles:
            return True
        pending = list(self._dirty_profiles)
        done = self._call("invalidate", lambda r: r.delete(*[self._profile_key(u) for u in pending]) >= 0, False)
        if done:
            self._dirty_profiles.difference_update(pending)
        return done

    def get_profile(self, user_id: str) -> ProfileRecord | None:
        if not self.configured or not self._flush_dirty():
            return None
        payload = self._call("get profile", lambda r: r.get(self._profile_key(user_id)), None)
        if not payload:
            return None
        try:
            return ProfileRecord.from_json(json.loads(str(payload)))
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed cached profile for %s", user_id)
            return None

    def fill_profile(self, record: ProfileRecord) -> None:
        """Cache a profile just read from the database, unless an entry is already there."""
        if not self.configured:
            return
        payload = json.dumps(record.to_json())
        key = self._profile_key(record.user_id)
        self._call("fill profile", lambda r: r.set(key, payload, nx=True, ex=self.profile_ttl_s), None)

    def store_profile(self, record: ProfileRecord) -> None:
        """Cache a profile just written (replacing any older version)."""
        if not self.configured:
            return
        payload = json.dumps(record.to_json())
        key = self._profile_key(record.user_id)
        stored = self._call(
            "store profile",
            lambda r: r.eval(_SET_IF_NEWER, 1, key, payload, record.version, self.profile_ttl_s),
            None,
        )
        if stored is None:
            self._dirty_profiles.add(record.user_id)

    def forget_profile(self, user_id: str) -> None:
        if not self.configured:
            return
        if self._call("forget profile", lambda r: r.delete(self._profile_key(user_id)), None) is None:
            self._dirty_profiles.add(user_id)

    # ---- small per-user hashes (kept duel answers, app/duel_memory.py) --------------------
    def get_field(self, name: str, field: str) -> str | None:
        """One field of the hash ``{prefix}:{name}`` (None if absent, or without Redis)."""
        value = self._call("hget", lambda r: r.hget(f"{self.prefix}:{name}", field), None)
        return value if isinstance(value, str) else None

    def put_field(self, name: str, field: str, value: str, ttl_s: int, max_fields: int = 0) -> None:
        """Set one field of the hash ``{prefix}:{name}``; the whole hash expires ``ttl_s`` after this write.
        With ``max_fields``, a hash that grows past it loses other fields, drawn at random, down to it."""
        key = f"{self.prefix}:{name}"

        def write(r: redis.Redis) -> None:
            pipe = r.pipeline()
            pipe.hset(key, field, value)
            pipe.expire(key, max(1, ttl_s))
            pipe.hlen(key)
            over = int(pipe.execute()[-1]) - max_fields
            if max_fields > 0 and over > 0:
                fields = cast(list[str], r.hrandfield(key, over + 1) or [])  # distinct fields
                drawn = [f for f in fields if f != field][:over]
                if drawn:
                    r.hdel(key, *drawn)

        self._call("hset", write, None)

    def delete(self, name: str) -> None:
        self._call("delete", lambda r: r.delete(f"{self.prefix}:{name}"), None)

    # ---- rate limits -------------------------------------------------------------------
    def allow_request(self, key_id: str, limit_per_minute: int) -> RateDecision:
        """Count one request for ``key_id`` in the current minute."""
        if limit_per_minute <= 0:
            return RateDecision(True, 0, 0, 0)
        now = time.time()
        window = int(now // 60)
        retry_after = max(1, int(60 - now % 60))
        key = f"{self.prefix}:rate:{key_id}:{window}"

        def count(r: redis.Redis) -> int:
            pipe = r.pipeline()
            pipe.incr(key)
            pipe.expire(key, 61)
            return int(pipe.execute()[0])

        used = self._call("rate limit", count, None)
        if used is None:
            used = self._local_limits.hit(key_id, window)
        remaining = max(0, limit_per_minute - used)
        return RateDecision(used <= limit_per_minute, limit_per_minute, remaining, retry_after)

    # ---- head events -------------------------------------------------------------------
    def publish_head_event(self, event: HeadEvent) -> bool:
        """Announce a head change; False when Redis is not there to carry it."""
        return bool(self._call("publish", lambda r: r.publish(self.channel, event.to_json()) >= 0, False))

    def subscribe_head_events(self, on_event: Callable[[HeadEvent], None]) -> HeadEventListener:
        listener = HeadEventListener(self, on_event)
        listener.start()
        return listener


class HeadEventListener:
    """A daemon thread delivering head events; after every (re)connect it delivers ``resync``
    first, because events published while it was disconnected are lost."""

    def __init__(self, cache: Cache, on_event: Callable[[HeadEvent], None]) -> None:
        self._cache = cache
        self._on_event = on_event
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="head-events", daemon=True)
        self.connected = threading.Event()

    def start(self) -> None:
        if self._cache.url:
            self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _deliver(self, event: HeadEvent) -> None:
        try:
            self._on_event(event)
        except Exception:
            log.exception("head event handler failed for %s", event)

    def _run(self) -> None:
        assert self._cache.url is not None
        backoff = 0.5
        while not self._stop.is_set():
            client = redis.Redis.from_url(
                self._cache.url, socket_connect_timeout=1.0, socket_timeout=5.0, decode_responses=True
            )
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self._cache.channel)
                self.connected.set()
                backoff = 0.5
                self._deliver(HeadEvent("resync"))
                while not self._stop.is_set():
                    message: dict[str, Any] | None = pubsub.get_message(timeout=1.0)
                    if message and message.get("type") == "message":
                        try:
                            event = HeadEvent.from_json(str(message["data"]))
                        except (ValueError, KeyError):
                            log.warning("ignoring a malformed head event: %r", message["data"])
                            continue
                        self._deliver(event)
            except redis.RedisError as exc:
                if self.connected.is_set():
                    log.warning("head event subscription lost (%s); reconnecting", exc)
                self.connected.clear()
            finally:
                pubsub.close()
                client.close()
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 10.0)


class CachedProfiles:
    """Profiles read through the cache and written through to the database, then the cache."""

    def __init__(self, store: ProfileStore, cache: Cache) -> None:
        self.store = store
        self.cache = cache

    def get(self, user_id: str) -> ProfileRecord:
        cached = self.cache.get_profile(user_id)
        if cached is not None:
            return cached
        record = self.store.get(user_id)
        self.cache.fill_profile(record)
        return record

    def put(
        self,
        user_id: str,
        personalization: Personalization,
        expected_version: int | None = None,
        source: str = SOURCE_MANUAL,
    ) -> ProfileRecord:
        try:
            record = self.store.put(user_id, personalization, expected_version, source)
        except NotFoundError:
            self.cache.forget_profile(user_id)
            raise
        self.cache.store_profile(record)
        return record
