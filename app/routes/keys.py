"""A user's API keys: list, rotate, revoke (the user themself, or an admin).

GET    /v1/users/{user}/keys              list (prefixes and dates; never a key)
POST   /v1/users/{user}/keys/rotate       a new key; the others stop now or after ``grace_seconds``
DELETE /v1/users/{user}/keys/{key_id}     revoke one key
DELETE /v1/users/{user}/keys              revoke every key of the user

``{user}`` is a user id or name. A change is applied to this replica's
authentication cache before the response returns (the old key gets 401 here at
once) and announced to the other replicas (see :mod:`app.auth` for the bound
when the announcement cannot travel). Every change lands in the audit log.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from fastapi import APIRouter, status

from app.deps import CurrentUser, ServicesDep, require_self_or_admin
from app.errors import error_responses
from app.key_schemas import KeyIssued, KeyList, KeyOut, KeyRotate
from app.services import Services
from personalize.db.models import utcnow
from personalize.db.records import ApiKeyRecord, UserRecord

router = APIRouter(prefix="/v1/users", tags=["keys"])
ERRORS = error_responses(401, 403, 404, 429, 503)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def key_out(key: ApiKeyRecord, now: datetime) -> KeyOut:
    return KeyOut(
        id=key.id,
        user_id=key.user_id,
        prefix=key.prefix,
        status=key.status(now),  # type: ignore[arg-type]  # one of the three literals
        created_at=key.created_at.isoformat(),
        created_by=key.created_by,
        expires_at=_iso(key.expires_at),
        revoked_at=_iso(key.revoked_at),
    )


def _target(services: Services, caller: UserRecord, user: str) -> UserRecord:
    """The user named by id or name, if the caller may manage their keys."""
    if user in (caller.id, caller.name):
        return caller
    require_self_or_admin(caller, user, "user")
    return services.users.get(user)


@router.get("/{user}/keys", responses=ERRORS)
def list_keys(user: str, caller: CurrentUser, services: ServicesDep) -> KeyList:
    target = _target(services, caller, user)
    now = utcnow()
    return KeyList(object="list", data=[key_out(k, now) for k in services.users.keys.keys(target.id)])


@router.post(
    "/{user}/keys/rotate", status_code=status.HTTP_201_CREATED, responses=error_responses(400, 413, 422, *ERRORS)
)
def rotate_key(user: str, body: KeyRotate, caller: CurrentUser, services: ServicesDep) -> KeyIssued:
    """Issue a new key. The user's other keys stop working now, or ``grace_seconds`` from now."""
    target = _target(services, caller, user)
    now = utcnow()
    expires = now + timedelta(seconds=body.expires_in_seconds) if body.expires_in_seconds else None
    issued = services.users.keys.rotate(target.id, actor_id=caller.id, grace_s=body.grace_seconds, expires_at=expires)
    services.keys_changed(target.id)
    return KeyIssued(
        api_key=issued.api_key, key=key_out(issued.record, now), retired=[key_out(k, now) for k in issued.retired]
    )


@router.delete("/{user}/keys/{key_id}", responses=ERRORS)
def revoke_key(user: str, key_id: str, caller: CurrentUser, services: ServicesDep) -> KeyList:
    """Revoke one key (it gets 401 from now on). Revoking a revoked key changes nothing."""
    target = _target(services, caller, user)
    revoked = services.users.keys.revoke(target.id, actor_id=caller.id, key_id=key_id)
    services.keys_changed(target.id)
    now = utcnow()
    return KeyList(object="list", data=[key_out(k, now) for k in revoked])


@router.delete("/{user}/keys", responses=ERRORS)
def revoke_all_keys(user: str, caller: CurrentUser, services: ServicesDep) -> KeyList:
    """Revoke every key of the user; they can sign in again only with a key an admin rotates for them."""
    target = _target(services, caller, user)
    revoked = services.users.keys.revoke(target.id, actor_id=caller.id)
    services.keys_changed(target.id)
    now = utcnow()
    return KeyList(object="list", data=[key_out(k, now) for k in revoked])
