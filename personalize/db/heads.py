"""The head registry: objectives and their uploaded head versions.

At most one version per objective is active (a partial unique index guards it);
the active versions are what every replica keeps loaded in its engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, selectinload

from personalize.db.audit import record_action
from personalize.db.errors import AlreadyExistsError, NotFoundError
from personalize.db.models import HeadVersion, Objective
from personalize.db.records import HeadVersionRecord, ObjectiveRecord
from personalize.db.session import Database


def _version_record(row: HeadVersion) -> HeadVersionRecord:
    return HeadVersionRecord(
        id=row.id,
        objective=row.objective,
        version=row.version,
        kind=row.kind,
        backbone_id=row.backbone_id,
        tokenizer_hash=row.tokenizer_hash,
        artifact_path=row.artifact_path,
        sha256=row.sha256,
        size_bytes=row.size_bytes,
        calibration=dict(row.calibration),
        meta=dict(row.meta),
        active=row.active,
        created_by=row.created_by,
        created_at=row.created_at,
    )


def _objective_record(row: Objective) -> ObjectiveRecord:
    versions = sorted(row.versions, key=lambda v: v.id)
    return ObjectiveRecord(row.name, row.description, row.created_at, tuple(_version_record(v) for v in versions))


def _activate(session: Session, objective: str, version_id: int) -> None:
    session.execute(
        update(HeadVersion).where(HeadVersion.objective == objective, HeadVersion.active.is_(True)).values(active=False)
    )
    session.flush()
    session.execute(update(HeadVersion).where(HeadVersion.id == version_id).values(active=True))


class HeadStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add_version(
        self,
        meta: Mapping[str, Any],
        *,
        sha256: str,
        artifact_path: str,
        size_bytes: int,
        created_by: str | None,
        activate: bool = True,
    ) -> HeadVersionRecord:
        """Record an uploaded head (``meta`` is its head.json); re-uploading the same bytes is a no-op.

        Raises :class:`AlreadyExistsError` when the version exists with other contents.
        """
        objective, version = str(meta["objective"]), str(meta["version"])
        with self.db.session() as session:
            if session.get(Objective, objective) is None:
                session.add(Objective(name=objective, description=str(meta.get("description", ""))))
                session.flush()
            row = session.scalars(
                select(HeadVersion).where(HeadVersion.objective == objective, HeadVersion.version == version)
            ).first()
            if row is not None and row.sha256 != sha256:
                raise AlreadyExistsError(
                    f"{objective!r} version {version!r} is already registered with other contents "
                    f"(sha256 {row.sha256[:12]}…); give the new head another version"
                )
            if row is None:
                row = HeadVersion(
                    objective=objective,
                    version=version,
                    kind=str(meta.get("kind", "")),
                    backbone_id=str(meta["backbone_id"]),
                    tokenizer_hash=str(meta["tokenizer_hash"]),
                    artifact_path=artifact_path,
                    sha256=sha256,
                    size_bytes=size_bytes,
                    calibration=dict(meta.get("calibration") or {}),
                    meta=dict(meta),
                    active=False,
                    created_by=created_by,
                )
                session.add(row)
                session.flush()
                record_action(session, created_by, "head.register", f"{objective}@{version}", {"sha256": sha256})
            if activate:
                _activate(session, objective, row.id)
                record_action(session, created_by, "head.activate", f"{objective}@{version}")
            session.refresh(row)
            return _version_record(row)

    def activate(self, objective: str, version: str, *, actor_id: str | None) -> HeadVersionRecord:
        with self.db.session() as session:
            row = session.scalars(
                select(HeadVersion).where(HeadVersion.objective == objective, HeadVersion.version == version)
            ).first()
            if row is None:
                known = self._version_names(session, objective)
                raise NotFoundError(
                    f"objective {objective!r} has no version {version!r}; "
                    f"registered versions: {', '.join(known) or '(none)'}"
                )
            _activate(session, objective, row.id)
            record_action(session, actor_id, "head.activate", f"{objective}@{version}")
            session.refresh(row)
            return _version_record(row)

    def deactivate(self, objective: str, *, actor_id: str | None) -> None:
        with self.db.session() as session:
            self._require(session, objective)
            session.execute(update(HeadVersion).where(HeadVersion.objective == objective).values(active=False))
            record_action(session, actor_id, "head.deactivate", objective)

    def delete_objective(self, objective: str, *, actor_id: str | None) -> list[HeadVersionRecord]:
        """Remove an objective and all its versions; returns what was removed."""
        with self.db.session() as session:
            row = self._require(session, objective)
            removed = [_version_record(v) for v in row.versions]
            session.delete(row)
            record_action(session, actor_id, "objective.delete", objective, {"versions": [v.version for v in removed]})
            return removed

    def get(self, objective: str) -> ObjectiveRecord:
        with self.db.session() as session:
            return _objective_record(self._require(session, objective))

    def objectives(self) -> list[ObjectiveRecord]:
        with self.db.session() as session:
            rows = session.scalars(
                select(Objective).options(selectinload(Objective.versions)).order_by(Objective.name)
            ).all()
            return [_objective_record(r) for r in rows]

    def active_versions(self) -> list[HeadVersionRecord]:
        with self.db.session() as session:
            rows = session.scalars(
                select(HeadVersion).where(HeadVersion.active.is_(True)).order_by(HeadVersion.objective)
            ).all()
            return [_version_record(r) for r in rows]

    def is_sha_referenced(self, sha256: str) -> bool:
        with self.db.session() as session:
            return session.scalars(select(HeadVersion.id).where(HeadVersion.sha256 == sha256)).first() is not None

    @staticmethod
    def _version_names(session: Session, objective: str) -> list[str]:
        return list(session.scalars(select(HeadVersion.version).where(HeadVersion.objective == objective)))

    @staticmethod
    def _require(session: Session, objective: str) -> Objective:
        row = session.get(Objective, objective)
        if row is None:
            known = session.scalars(select(Objective.name).order_by(Objective.name)).all()
            raise NotFoundError(
                f"unknown objective {objective!r}; registered objectives: {', '.join(known) or '(none)'}"
            )
        return row
