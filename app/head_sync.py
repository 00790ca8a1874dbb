"""Keeps the engine's loaded heads equal to the database's active head versions.

``reconcile()`` is the only way heads change in a running server. It runs after
a local admin change, on every Redis head event from another replica, and every
``head_sync_interval_s`` as a fallback for events lost while Redis was down.
Heads are read from disk on the caller's thread; the engine is changed on the
decoder thread between batches.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from app.scheduler import Scheduler
from personalize.db.heads import HeadStore
from personalize.db.records import HeadVersionRecord
from personalize.decoding.engine import Engine
from personalize.errors import PersonalizeError
from personalize.heads import ValueHead, load_head
from personalize.models import BaseModel
from personalize.remote.engine import RemoteEngine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedHead:
    version: str
    sha256: str


@dataclass
class SyncReport:
    loaded: list[str] = field(default_factory=list)
    unloaded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


class HeadSync:
    def __init__(
        self,
        heads: HeadStore,
        *,
        artifact_root: Path,
        base: BaseModel,
        engine: Engine | RemoteEngine,
        scheduler: Scheduler,
        timeout_s: float = 120.0,
    ) -> None:
        self.heads = heads
        self.artifact_root = artifact_root
        self.base = base
        self.engine = engine
        self.scheduler = scheduler
        self.timeout_s = timeout_s
        self.loaded: dict[str, LoadedHead] = {}
        self.failed: dict[str, str] = {}
        """objective -> why its active version could not be loaded."""
        self.synced = threading.Event()
        self._lock = threading.Lock()

    def reconcile(self) -> SyncReport:
        with self._lock:
            report = self._reconcile()
            self.synced.set()
            return report

    def _reconcile(self) -> SyncReport:
        report = SyncReport()
        desired = {v.objective: v for v in self.heads.active_versions()}
        remove = [
            name
            for name, have in self.loaded.items()
            if name not in desired or (have.version, have.sha256) != (desired[name].version, desired[name].sha256)
        ]
        add: list[tuple[HeadVersionRecord, ValueHead]] = []
        for name, record in desired.items():
            have = self.loaded.get(name)
            if have is not None and (have.version, have.sha256) == (record.version, record.sha256):
                continue
            try:
                add.append((record, load_head(self.artifact_root / record.artifact_path, self.base)))
            except PersonalizeError as exc:
                log.error("cannot load head %s@%s: %s", name, record.version, exc)
                report.failed[name] = str(exc)
        self.failed = {k: v for k, v in self.failed.items() if k in desired} | report.failed
        if not remove and not add:
            return report

        def apply() -> dict[str, str]:
            errors: dict[str, str] = {}
            for name in remove:
                if name in self.engine.objectives:
                    self.engine.remove_head(name)
            for record, head in add:
                try:
                    self.engine.add_head(head)
                except PersonalizeError as exc:
                    errors[record.objective] = str(exc)
            return errors

        errors = self.scheduler.call_between_batches(apply).result(self.timeout_s)
        for name in remove:
            self.loaded.pop(name, None)
            report.unloaded.append(name)
        for record, _head in add:
            if record.objective in errors:
                log.error("cannot load head %s: %s", record.objective, errors[record.objective])
                report.failed[record.objective] = errors[record.objective]
                self.failed[record.objective] = errors[record.objective]
                continue
            self.loaded[record.objective] = LoadedHead(record.version, record.sha256)
            self.failed.pop(record.objective, None)
            report.loaded.append(f"{record.objective}@{record.version}")
        if report.loaded or report.unloaded:
            log.info("heads loaded: %s; unloaded: %s", report.loaded, report.unloaded)
        return report
