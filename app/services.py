"""Everything a request handler needs, built once per app from Settings.

The database, stores and cache are ready as soon as the app starts; the model
(base + engine + scheduler + head sync) loads on a background thread so that
``/healthz`` answers at once and ``/readyz`` turns 200 when decoding can start.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from app.cache import Cache, CachedProfiles, HeadEvent, HeadEventListener
from app.head_sync import HeadSync
from app.metrics import Metrics
from app.scheduler import Scheduler
from personalize.db import AuditStore, Database, HeadStore, ProfileStore, UserStore
from personalize.db.migrate import current_revision, head_revision, is_up_to_date, upgrade
from personalize.decoding.engine import Engine
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
    from personalize.models import load_base_model

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
        self.db = Database(settings.database_url)
        self.users = UserStore(self.db)
        self.heads = HeadStore(self.db)
        self.audit = AuditStore(self.db)
        self.cache = Cache(
            settings.redis_url,
            prefix=settings.redis_prefix,
            profile_ttl_s=settings.profile_cache_ttl_s,
            retry_after_s=settings.redis_retry_s,
        )
        self.profiles = CachedProfiles(ProfileStore(self.db), self.cache)
        self.metrics = metrics or Metrics()
        self.runtime: ModelRuntime | None = None
        self.load_error: str | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._listener: HeadEventListener | None = None

    # ---- lifecycle ---------------------------------------------------------------------
    def start(self, engine_factory: EngineFactory | None) -> None:
        if engine_factory is None:
            self.load_error = "no model configured"
            return
        self._spawn("model-loader", lambda: self._load(engine_factory))

    def stop(self) -> None:
        self._stop.set()
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

    def _load(self, engine_factory: EngineFactory) -> None:
        try:
            bundle = engine_factory(self.settings)
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
            log.exception("the model could not be loaded")
            self.load_error = f"{type(exc).__name__}: {exc}"
            return
        self.metrics.track_queue(lambda: scheduler.depth)
        self.metrics.track_kv_cache(lambda: scheduler.kv_cache_tokens, lambda: scheduler.kv_cache_bytes)
        self.runtime = ModelRuntime(bundle.base, bundle.engine, scheduler, sync)
        if self._stop.is_set():
            scheduler.stop()
            return
        self._listener = self.cache.subscribe_head_events(self._on_head_event)
        self._spawn("head-sync", self._sync_periodically)
        log.info("model %s ready on replica %s", bundle.base.backbone_id, self.replica_id)

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

    def heads_changed(self, event: HeadEvent) -> None:
        """After a local admin change: apply it here, then tell the other replicas."""
        if self.runtime is not None:
            self.runtime.head_sync.reconcile()
        self.cache.publish_head_event(event)
