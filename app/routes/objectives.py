"""Objectives and their heads: list (any user); upload, (de)activate, delete (admin).

A change is applied on this replica before the response returns (the head is
loaded or unloaded between two decoding batches), then announced on Redis so the
other replicas follow; replicas that miss the event catch up on their next
periodic sync with the database.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, status
from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from app.artifacts import Upload, store_upload
from app.cache import HeadEvent
from app.deps import AdminUser, CurrentUser, RuntimeDep, ServicesDep
from app.errors import APIError, error_responses
from app.schemas import ObjectivePatch
from app.served_rewards import check_served_reward
from app.services import Services
from personalize.db.artifacts import remove_artifact
from personalize.db.records import HeadVersionRecord, ObjectiveRecord, UserRecord
from personalize.errors import RewardError
from personalize.heads import ValueHead

router = APIRouter(prefix="/v1/objectives", tags=["objectives"])
MAX_FILES = 8


def _version_json(v: HeadVersionRecord) -> dict[str, Any]:
    return {
        "version": v.version,
        "active": v.active,
        "kind": v.kind,
        "sha256": v.sha256,
        "size_bytes": v.size_bytes,
        "created_by": v.created_by,
        "created_at": v.created_at.isoformat(),
    }


def _objective_json(services: Services, objective: ObjectiveRecord) -> dict[str, Any]:
    active = objective.active_version
    loaded = services.runtime.head_sync.loaded if services.runtime is not None else {}
    have = loaded.get(objective.name)
    return {
        "object": "objective",
        "name": objective.name,
        "description": objective.description,
        "version": active.version if active else None,
        "active": active is not None,
        "loaded": bool(active and have and have.version == active.version),
        "kind": active.kind if active else None,
        "backbone_id": active.backbone_id if active else None,
        "calibration": dict(active.calibration) if active else None,
        "reward": active.meta.get("reward") if active else None,
        "versions": [_version_json(v) for v in objective.versions],
    }


@router.get("", responses=error_responses(401, 429, 503))
def list_objectives(_user: CurrentUser, services: ServicesDep) -> dict[str, Any]:
    return {"object": "list", "data": [_objective_json(services, o) for o in services.heads.objectives()]}


@router.get("/{name}", responses=error_responses(401, 404, 429, 503))
def get_objective(name: str, _user: CurrentUser, services: ServicesDep) -> dict[str, Any]:
    return _objective_json(services, services.heads.get(name))


@router.post("", status_code=status.HTTP_201_CREATED, responses=error_responses(400, 401, 403, 409, 413, 422, 429, 503))
async def upload_head(request: Request, admin: AdminUser, services: ServicesDep, runtime: RuntimeDep) -> dict[str, Any]:
    """Register a head: multipart files ``head.json`` + ``*.safetensors`` (field name free),
    optional form field ``activate`` (default true)."""
    async with request.form(max_files=MAX_FILES, max_fields=8) as form:
        uploads: list[Upload] = []
        activate = True
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                uploads.append(Upload(value.filename or "", value.file))
            elif key == "activate":
                activate = value.strip().lower() not in ("0", "false", "no", "off")
        if not uploads:
            raise APIError(
                422,
                "no files in the upload: send head.json and its .safetensors as multipart files",
                param="files",
                code="invalid_upload",
            )

        def register() -> dict[str, Any]:
            stored = store_upload(
                uploads,
                root=services.settings.artifact_root,
                base=runtime.base,
                max_bytes=services.settings.max_upload_bytes,
                check=lambda head: _check_reward(head, services),
            )
            meta = stored.head.meta
            services.heads.add_version(
                meta.to_json(),
                sha256=stored.sha256,
                artifact_path=stored.relative_path,
                size_bytes=stored.size_bytes,
                created_by=admin.id,
                activate=activate,
            )
            services.heads_changed(HeadEvent("activated", meta.objective, meta.version, services.replica_id))
            return _objective_json(services, services.heads.get(meta.objective))

        return await run_in_threadpool(register)


def _check_reward(head: ValueHead, services: Services) -> None:
    """A head's ``hf:`` reward must lie inside the reward root (422 naming it otherwise)."""
    try:
        check_served_reward(head.meta.reward_name, services.settings.reward_dir)
    except RewardError as exc:
        raise APIError(422, f"head.json: {exc}", param="files", code="reward_outside_root") from exc


@router.patch("/{name}", responses=error_responses(400, 401, 403, 404, 413, 422, 429, 503))
def patch_objective(name: str, body: ObjectivePatch, admin: AdminUser, services: ServicesDep) -> dict[str, Any]:
    """``{"active": true, "version": "2"}`` activates a version (default: the newest);
    ``{"active": false}`` unloads the objective everywhere but keeps its versions."""
    objective = services.heads.get(name)
    if body.active:
        version = body.version or (objective.versions[-1].version if objective.versions else None)
        if version is None:
            raise APIError(404, f"objective {name!r} has no versions", param="version", code="not_found")
        services.heads.activate(name, version, actor_id=admin.id)
        event = HeadEvent("activated", name, version, services.replica_id)
    else:
        services.heads.deactivate(name, actor_id=admin.id)
        event = HeadEvent("deactivated", name, "", services.replica_id)
    services.heads_changed(event)
    return _objective_json(services, services.heads.get(name))


@router.delete("/{name}", responses=error_responses(401, 403, 404, 429, 503))
def delete_objective(name: str, admin: AdminUser, services: ServicesDep) -> dict[str, Any]:
    removed = services.heads.delete_objective(name, actor_id=admin.id)
    services.heads_changed(HeadEvent("deleted", name, "", services.replica_id))
    _remove_unreferenced(services, removed, admin)
    return {"object": "objective.deleted", "name": name, "deleted": True}


def _remove_unreferenced(services: Services, removed: list[HeadVersionRecord], _admin: UserRecord) -> None:
    for version in removed:
        if not services.heads.is_sha_referenced(version.sha256):
            remove_artifact(services.settings.artifact_root, version.artifact_path)
