"""GET /v1/audit: the most recent admin actions (admin only)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from app.deps import AdminUser, ServicesDep
from app.errors import error_responses

router = APIRouter(prefix="/v1/audit", tags=["audit"])


@router.get("", responses=error_responses(401, 403, 422, 429, 503))
def recent_actions(
    _admin: AdminUser, services: ServicesDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> dict[str, Any]:
    entries = services.audit.recent(limit)
    return {
        "object": "list",
        "data": [
            {
                "at": e.at.isoformat(),
                "actor_id": e.actor_id,
                "action": e.action,
                "target": e.target,
                "detail": dict(e.detail),
            }
            for e in entries
        ],
    }
