"""Request dependencies as ``Annotated`` aliases: services, the caller, admin scope, the model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.cache import RateDecision
from app.errors import APIError, forbidden, not_ready, unauthorized
from app.services import ModelRuntime, Services
from personalize.db.records import UserRecord


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")
"""Declares the bearer scheme in the OpenAPI document; the checks and messages are below."""


def get_current_user(
    request: Request,
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> UserRecord:
    """The user owning the request's ``Authorization: Bearer <key>``, rate-limited per key.

    The key's id is left in ``request.state.key_id`` (per-key limits use it)."""
    if credentials is None:
        if not request.headers.get("authorization"):
            raise unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        raise unauthorized("malformed Authorization header: expected 'Bearer <key>'")
    key = credentials.credentials.strip()
    grant = services.auth.authenticate(key)
    if grant is None:
        raise unauthorized("invalid API key (unknown, revoked or expired)")
    request.state.key_id = grant.key_id
    limit = services.settings.rate_limit_per_minute
    take_rate(
        services,
        grant.key_id[:16],
        limit,
        lambda retry: f"rate limit of {limit} requests per minute exceeded; retry in {retry} s",
        lambda decision: {
            "x-ratelimit-limit-requests": str(limit),
            "x-ratelimit-remaining-requests": str(decision.remaining),
            "x-ratelimit-reset-requests": f"{decision.retry_after_s}s",
        },
    )
    return grant.user


def take_rate(
    services: Services,
    bucket: str,
    limit: int,
    message: Callable[[int], str],
    headers: Callable[[RateDecision], dict[str, str]] = lambda _: {},
) -> None:
    """Count one request against ``bucket``'s per-minute ``limit``; over it: 429 with Retry-After (and
    ``headers``), the message given the seconds to wait."""
    decision = services.cache.allow_request(bucket, limit)
    if not decision.allowed:
        services.metrics.rejected.labels("rate_limit").inc()
        raise APIError(
            429,
            message(decision.retry_after_s),
            type="rate_limit_error",
            code="rate_limit_exceeded",
            headers={"Retry-After": str(decision.retry_after_s), **headers(decision)},
        )


CurrentUser = Annotated[UserRecord, Depends(get_current_user)]


def get_admin_user(user: CurrentUser) -> UserRecord:
    if not user.is_admin:
        raise forbidden("this endpoint needs an admin API key")
    return user


AdminUser = Annotated[UserRecord, Depends(get_admin_user)]


def get_runtime(services: ServicesDep) -> ModelRuntime:
    if services.runtime is None:
        raise not_ready(f"the model is not ready yet ({services.load_error or 'loading'})")
    return services.runtime


RuntimeDep = Annotated[ModelRuntime, Depends(get_runtime)]


def require_self_or_admin(user: UserRecord, target_id: str, param: str | None = None) -> None:
    if user.id != target_id and not user.is_admin:
        raise forbidden("you can only access your own profile (admins can access any)", param)
