"""GET /v1/models: the served base model (also reachable as ``default``)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter

from app.deps import CurrentUser, RuntimeDep
from app.errors import error_responses

router = APIRouter(prefix="/v1", tags=["models"])
_STARTED = int(time.time())


@router.get("/models", responses=error_responses(401, 429, 503))
def list_models(_user: CurrentUser, runtime: RuntimeDep) -> dict[str, Any]:
    def entry(model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": _STARTED, "owned_by": "personalize"}

    return {"object": "list", "data": [entry(runtime.model_id), entry("default")]}
