"""Users and profiles: POST /v1/users (admin), GET /v1/users/me, GET/PUT /v1/users/{id}/profile."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Header, Response, status

from app.deps import AdminUser, CurrentUser, ServicesDep, require_self_or_admin
from app.errors import APIError, api_error_for, error_responses
from app.schemas import ProfileIn, ProfileOut, UserCreate, UserCreated, UserOut
from personalize.db.models import utcnow
from personalize.db.records import ProfileRecord, UserRecord
from personalize.decoding.config import Personalization
from personalize.errors import ConfigError, UnknownObjectiveError

router = APIRouter(prefix="/v1/users", tags=["users"])


def _user_out(user: UserRecord) -> UserOut:
    return UserOut(
        id=user.id,
        name=user.name,
        role=user.role,
        key_prefix=user.key_prefix,
        created_at=user.created_at.isoformat(),
    )


def _profile_out(profile: ProfileRecord, response: Response) -> ProfileOut:
    response.headers["ETag"] = f'"{profile.version}"'
    return ProfileOut(**profile.to_json())


def _parse_if_match(value: str | None) -> int | None:
    if value is None:
        return None
    tag = value.strip().removeprefix("W/").strip('"')
    if not tag.isdigit():
        raise APIError(
            422,
            f"If-Match must be a profile version such as '\"3\"', got {value!r}",
            param="If-Match",
            code="invalid_value",
        )
    return int(tag)


@router.post("", status_code=status.HTTP_201_CREATED, responses=error_responses(400, 401, 403, 409, 413, 422, 429, 503))
def create_user(body: UserCreate, admin: AdminUser, services: ServicesDep) -> UserCreated:
    expires = utcnow() + timedelta(seconds=body.expires_in_seconds) if body.expires_in_seconds else None
    created = services.users.create(body.name, body.role, actor_id=admin.id, expires_at=expires)
    return UserCreated(**_user_out(created.user).model_dump(), api_key=created.api_key)


@router.get("/me", responses=error_responses(401, 429, 503))
def whoami(user: CurrentUser) -> UserOut:
    return _user_out(user)


@router.get("/{user_id}/profile", responses=error_responses(401, 403, 404, 429, 503))
def get_profile(user_id: str, user: CurrentUser, services: ServicesDep, response: Response) -> ProfileOut:
    require_self_or_admin(user, user_id)
    return _profile_out(services.profiles.get(user_id), response)


@router.put("/{user_id}/profile", responses=error_responses(400, 401, 403, 404, 409, 413, 422, 429, 503))
def put_profile(
    user_id: str,
    body: ProfileIn,
    user: CurrentUser,
    services: ServicesDep,
    response: Response,
    if_match: Annotated[str | None, Header()] = None,
) -> ProfileOut:
    """Replace the profile. Send the version you read (``If-Match`` or ``version``): a write
    based on an older version is refused with 409 instead of silently undoing another."""
    require_self_or_admin(user, user_id)
    expected = _parse_if_match(if_match)
    if expected is not None and body.version is not None and expected != body.version:
        raise APIError(
            422,
            f"If-Match names version {expected} but the body says {body.version}",
            param="version",
            code="invalid_value",
        )
    expected = expected if expected is not None else body.version
    registered = {v.objective for v in services.heads.active_versions()}
    for name in body.weights:
        if name not in registered:
            raise api_error_for(UnknownObjectiveError(name, registered), f"weights.{name}")
    try:
        personalization = Personalization(weights=body.weights, beta=body.beta, method=body.method, top_k=body.top_k)
    except ConfigError as exc:
        raise api_error_for(exc) from exc
    return _profile_out(services.profiles.put(user_id, personalization, expected), response)
