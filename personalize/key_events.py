"""Cross-replica notices that a user's API keys changed (revoked, rotated), over Redis pub/sub.

Whoever changes a key (a replica's admin endpoint, or the CLI) publishes the
user's id on ``<prefix>:keys``; every replica's listener then drops what it
cached about that user's keys. A notice is only a shortcut: replicas also
re-check every cached key against the database after a short TTL, so a lost
notice (Redis down, a listener reconnecting) delays a revocation by at most that
TTL. After every (re)connect the listener asks its owner to forget everything,
because notices published while it was disconnected are lost.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

import redis

log = logging.getLogger(__name__)

EVERYONE = None
"""What the listener passes to its callback when every cached key must be forgotten."""


def channel(prefix: str) -> str:
    return f"{prefix}:keys"


def publish_key_change(url: str | None, prefix: str, user_id: str, origin: str = "", timeout_s: float = 0.5) -> bool:
    """Announce that ``user_id``'s keys changed; False when Redis is absent or unreachable."""
    if not url:
        return False
    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        client.publish(channel(prefix), json.dumps({"user_id": user_id, "origin": origin}))
        return True
    except redis.RedisError as exc:
        log.warning("could not announce a key change for %s (%s); other replicas follow within their TTL", user_id, exc)
        return False
    finally:
        client.close()


class KeyChangeListener:
    """A daemon thread calling ``on_change(user_id)`` for every notice, ``on_change(None)`` after a (re)connect."""

    def __init__(self, url: str, prefix: str, on_change: Callable[[str | None], None]) -> None:
        self._url = url
        self._channel = channel(prefix)
        self._on_change = on_change
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="key-events", daemon=True)
        self.connected = threading.Event()

    def start(self) -> KeyChangeListener:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _deliver(self, user_id: str | None) -> None:
        try:
            self._on_change(user_id)
        except Exception:
            log.exception("key change handler failed for %s", user_id)

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            client = redis.Redis.from_url(self._url, socket_connect_timeout=1.0, socket_timeout=5.0)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self._channel)
                self.connected.set()
                backoff = 0.5
                self._deliver(EVERYONE)
                while not self._stop.is_set():
                    message: dict[str, Any] | None = pubsub.get_message(timeout=1.0)
                    if message and message.get("type") == "message":
                        self._deliver(_user_of(message["data"]))
            except redis.RedisError as exc:
                if self.connected.is_set():
                    log.warning("key change subscription lost (%s); reconnecting", exc)
                self.connected.clear()
            finally:
                pubsub.close()
                client.close()
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 10.0)


def _user_of(data: Any) -> str | None:
    """The user id of a notice; a malformed one means "forget everyone" (the safe reading)."""
    try:
        user_id = json.loads(data)["user_id"]
    except (ValueError, KeyError, TypeError):
        log.warning("malformed key change notice %r: forgetting every cached key", data)
        return EVERYONE
    return str(user_id)
