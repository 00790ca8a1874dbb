"""Everything a request handler needs, built once per app from Settings.

The database, stores and cache are ready as soon as the app starts; the model
(base + engine + scheduler + head sync) loads on a background thread so that
``/healthz`` answers at once and ``/readyz`` turns 200 when decoding can start.
A load that fails is tried again, waiting ``model_load_retry_s`` and doubling up
to ``model_load_retry_max_s``, until it succeeds or the app stops.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from app.auth import AuthCache
from app.cache import Cache, CachedProfiles, HeadEvent, HeadEventListener
from app.duel_memory import DuelMemory
from app.head_sync import HeadSync
from app.inflight import InFlightLimiter
from app.metrics import Metrics
from app.scheduler import Scheduler
from personalize.db import AuditStore, Database, HeadStore, ProfileStore, UserStore
from personalize.db.migrate import current_revision, head_revision, is_up_to_date, upgrade
from personalize.db.session import Timeouts
from personalize.decoding.engine import Engine
from personalize.key_events import KeyChangeListener, publish_key_change
from personalize.models import BaseModel
from personalize.remote.engine import RemoteEngine
from personalize.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelBundle:
    """What an engine factory returns: the base model and an engine over it (no heads yet)."""

    base: BaseModel
    engine: Engine | RemoteEngine


EngineFactory = Callable[[Settings], ModelBundle]


def default_engine_factory(settings: Settings) -> ModelBundle:
    """The base model and its engine; with ``remote_url`` set, the engine steering that upstream model
    (the local model then carries the heads only)."""
    from personalize.models import load_base_model, set_threads

    set_threads(settings.threads)
    base = load_base_model(settings.base_model, data_dir=settings.data_dir, dtype=settings.torch_dtype)
    if settings.remote_url:
        from personalize.remote.setup import remote_engine

        return ModelBundle(base, remote_engine(settings, Engine(base)))
    return ModelBundle(base, Engine(base))


@dataclass
class ModelRuntime:
    base: BaseModel
    engine: Engine | RemoteEngine
    scheduler: Scheduler
    head_sync: HeadSync

    @property
    def model_id(self) -> str:
        return self.base.backbone_id


class Services:
    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.replica_id = uuid.uuid4().hex[:12]
        if settings.should_auto_migrate:
            upgrade(settings.database_url)
        elif not is_up_to_date(settings.database_url):
            raise RuntimeError(
                f"the database schema is at {current_revision(settings.database_url) or 'base'}, "
                f"not {head_revision()}: run `personalize db upgrade` first"
            )
        timeouts = Timeouts(
            connect_s=settings.db_connect_timeout_s,
            statement_s=settings.db_statement_timeout_s,
            pool_s=settings.db_pool_timeout_s,
        )
        self.db = Database(settings.database_url, timeouts)
        self.users = UserStore(self.db)
        self.auth = AuthCache(self.users.keys, fresh_s=settings.auth_cache_ttl_s, stale_s=settings.auth_cache_stale_s)
        self.in_flight = InFlightLimiter(settings.max_in_flight_per_key)
        self.heads = HeadStore(self.db)
        self.audit = AuditStore(self.db)
        self.cache = Cache(
            settings.redis_url,
            prefix=settings.redis_prefix,
            profile_ttl_s=settings.profile_cache_ttl_s,
            retry_after_s=settings.redis_retry_s,
        )
        self.profiles = CachedProfiles(ProfileStore(self.db), self.cache)
        self.duel_memory = DuelMemory(self.cache, keep=settings.duel_keep, ttl_s=settings.duel_keep_ttl_s)
        self.metrics = metrics or Metrics()
        self.runtime: ModelRuntime | None = None
        self.load_error: str | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._listener: HeadEventListener | None = None
        self._key_listener: KeyChangeListener | None = None
        self.load_attempts = 0
        self._bundle: ModelBundle | None = None
        self.draining = False
        """Set when shutdown starts: no new completion is admitted, /readyz answers 503."""

    # ---- lifecycle ---------------------------------------------------------------------
    def start(self, engine_factory: EngineFactory | None) -> None:
        if self.settings.redis_url:
            self._key_listener = KeyChangeListener(
                self.settings.redis_url, self.settings.redis_prefix, self.auth.forget_user
            ).start()
        if engine_factory is None:
            self.load_error = "no model configured"
            return
        self._spawn("model-loader", lambda: self._load_with_retries(engine_factory))

    def begin_drain(self) -> None:
        """Stop admitting completions (requests already admitted go on)."""
        self.draining = True

    def stop(self) -> None:
        self._stop.set()
        if self._key_listener is not None:
            self._key_listener.stop()
        if self._listener is not None:
            self._listener.stop()
        if self.runtime is not None:
            self.runtime.scheduler.stop()
        for thread in self._threads:
            thread.join(5.0)
        self.cache.close()
        self.db.dispose()

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _load_with_retries(self, engine_factory: EngineFactory) -> None:
        wait = self.settings.model_load_retry_s
        while not self._stop.is_set():
            self.load_attempts += 1
            if self._load(engine_factory):
                return
            self.load_error = f"{self.load_error} (attempt {self.load_attempts}; next try in {wait:g} s)"
            if self._stop.wait(wait):
                return
            wait = min(wait * 2, self.settings.model_load_retry_max_s)

    def _load(self, engine_factory: EngineFactory) -> bool:
        """One try at loading the model; True when it is ready (or the app is stopping)."""
        scheduler: Scheduler | None = None
        try:
            if self._bundle is None:  # a model that loaded is kept: a retry only redoes what failed after it
                self._bundle = engine_factory(self.settings)
            bundle = self._bundle
            scheduler = Scheduler(
                bundle.engine,
                max_queue=self.settings.queue_size,
                max_batch_size=self.settings.max_batch_size,
                batch_window_s=self.settings.batch_window_ms / 1000,
                max_batch_rows=self.settings.max_batch_rows,
                max_kv_bytes=self.settings.kv_cache_mb * 2**20,
            )
            scheduler.on_batch = self.metrics.batch_size.observe
            scheduler.start()
            sync = HeadSync(
                self.heads,
                artifact_root=self.settings.artifact_root,
                base=bundle.base,
                engine=bundle.engine,
                scheduler=scheduler,
            )
            sync.reconcile()
        except Exception as exc:
            log.exception("the model could not be loaded (attempt %d)", self.load_attempts)
            self.load_error = f"{type(exc).__name__}: {exc}"
            if scheduler is not None:
                scheduler.stop(0)
            return False
        self.metrics.track_queue(lambda: scheduler.depth)
        self.metrics.track_kv_cache(lambda: scheduler.kv_cache_tokens, lambda: scheduler.kv_cache_bytes)
        self.load_error = None
        self.runtime = ModelRuntime(bundle.base, bundle.engine, scheduler, sync)
        if self._stop.is_set():
            scheduler.stop()
            return True
        self._listener = self.cache.subscribe_head_events(self._on_head_event)
        self._spawn("head-sync", self._sync_periodically)
        log.info("model %s ready on replica %s", bundle.base.backbone_id, self.replica_id)
        return True

    # ---- head changes ------------------------------------------------------------------
    def _on_head_event(self, event: HeadEvent) -> None:
        if self.runtime is not None and event.origin != self.replica_id:
            self.runtime.head_sync.reconcile()

    def _sync_periodically(self) -> None:
        while not self._stop.wait(self.settings.head_sync_interval_s):
            runtime = self.runtime
            if runtime is None:
                continue
            try:
                runtime.head_sync.reconcile()
            except Exception:
                log.exception("periodic head sync failed")

    def keys_changed(self, user_id: str) -> None:
        """After a local key change: forget the user's cached keys here, then tell the other replicas."""
        self.auth.forget_user(user_id)
        publish_key_change(self.settings.redis_url, self.settings.redis_prefix, user_id, self.replica_id)

    def heads_changed(self, event: HeadEvent) -> None:
        """After a local admin change: apply it here, then tell the other replicas."""
        if self.runtime is not None:
            self.runtime.head_sync.reconcile()
        self.cache.publish_head_event(event)
