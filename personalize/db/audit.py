"""The audit log of admin actions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from personalize.db.models import AuditEntry
from personalize.db.session import Database


@dataclass(frozen=True)
class AuditRecord:
    at: datetime
    actor_id: str | None
    action: str
    target: str
    detail: Mapping[str, Any]


def record_action(
    session: Session,
    actor_id: str | None,
    action: str,
    target: str,
    detail: Mapping[str, Any] | None = None,
) -> None:
    """Add an audit entry inside the caller's transaction (it commits with the change)."""
    session.add(AuditEntry(actor_id=actor_id, action=action, target=target, detail=dict(detail or {})))


class AuditStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def recent(self, limit: int = 100) -> list[AuditRecord]:
        with self.db.session() as session:
            rows = session.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)).all()
            return [AuditRecord(r.at, r.actor_id, r.action, r.target, dict(r.detail)) for r in rows]
