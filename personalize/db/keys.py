"""API keys: issue, authenticate, list, rotate, revoke.

A key is 256 bits from :mod:`secrets`; only its sha256 is stored (a fast hash is
enough for a random key of that size: there is nothing to brute-force), and the
stored digest is compared with :func:`hmac.compare_digest`. A user may hold
several keys; a key works while it is neither revoked nor past its
``expires_at``. Rotating issues a new key and retires the user's other keys:
at once (the default), or after a grace period during which both work. Every
change is written to the audit log in the same transaction.

What a key change means for replicas that cache authentications is the
service's business (see ``app/auth.py``): the store only says who changed.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.orm import Session

from personalize.db.audit import record_action
from personalize.db.errors import NotFoundError
from personalize.db.models import ApiKey, User, utcnow
from personalize.db.records import ApiKeyRecord, IssuedKey, KeyGrant, UserRecord
from personalize.db.session import Database
from personalize.errors import ConfigError

KEY_PREFIX = "pz-"
PREFIX_CHARS = len(KEY_PREFIX) + 6
MAX_GRACE_S = 30 * 24 * 3600
"""A rotated-out key may keep working for at most 30 days."""


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def aware(moment: datetime | None) -> datetime | None:
    """``moment`` with a time zone (SQLite hands back naive UTC datetimes)."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def user_record(row: User) -> UserRecord:
    return UserRecord(row.id, row.name, row.role, row.key_prefix, aware(row.created_at) or row.created_at)


def key_record(row: ApiKey) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=row.id,
        user_id=row.user_id,
        prefix=row.prefix,
        created_at=aware(row.created_at) or row.created_at,
        created_by=row.created_by,
        expires_at=aware(row.expires_at),
        revoked_at=aware(row.revoked_at),
    )


def check_expiry(expires_at: datetime | None, now: datetime) -> None:
    if expires_at is not None and (aware(expires_at) or expires_at) <= now:
        raise ConfigError(f"a key's expiry must be in the future, got {expires_at.isoformat()}")


def add_key(
    session: Session, user: User, *, actor_id: str | None, expires_at: datetime | None = None
) -> tuple[ApiKey, str]:
    """A new key for ``user`` inside the caller's transaction; returns the row and the clear key."""
    api_key = new_api_key()
    row = ApiKey(
        id=uuid.uuid4().hex,
        user_id=user.id,
        sha256=hash_api_key(api_key),
        prefix=api_key[:PREFIX_CHARS],
        created_by=actor_id,
        expires_at=expires_at,
    )
    session.add(row)
    user.key_prefix = row.prefix
    return row, api_key


def _works(now: datetime) -> ColumnElement[bool]:
    """The SQL condition "the key works at ``now``"."""
    return (ApiKey.revoked_at.is_(None)) & (or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now))


class ApiKeyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def authenticate(self, api_key: str) -> KeyGrant | None:
        """The user owning ``api_key`` and the key's id, if the key works now; else None."""
        digest = hash_api_key(api_key)
        with self.db.session() as session:
            found = session.execute(
                select(ApiKey, User).join(User, ApiKey.user_id == User.id).where(ApiKey.sha256 == digest)
            ).first()
            if found is None:
                return None
            key, user = found
            if not hmac.compare_digest(key.sha256, digest):
                return None
            record = key_record(key)
            if record.status(utcnow()) != "active":
                return None
            return KeyGrant(user_record(user), record.id, record.expires_at)

    def keys(self, user_id: str) -> list[ApiKeyRecord]:
        """A user's keys, oldest first (never the keys themselves)."""
        with self.db.session() as session:
            self._user(session, user_id)
            rows = session.scalars(
                select(ApiKey).where(ApiKey.user_id == user_id).order_by(ApiKey.created_at, ApiKey.id)
            ).all()
            return [key_record(r) for r in rows]

    def rotate(
        self,
        id_or_name: str,
        *,
        actor_id: str | None,
        grace_s: int = 0,
        expires_at: datetime | None = None,
    ) -> IssuedKey:
        """A new key for the user; their other working keys stop now, or ``grace_s`` seconds from now."""
        if not isinstance(grace_s, int) or not 0 <= grace_s <= MAX_GRACE_S:
            raise ConfigError(f"grace must be a whole number of seconds in [0, {MAX_GRACE_S}], got {grace_s!r}")
        now = utcnow()
        check_expiry(expires_at, now)
        with self.db.session() as session:
            user = self._user(session, id_or_name)
            others = session.scalars(select(ApiKey).where(ApiKey.user_id == user.id, _works(now))).all()
            end = now + timedelta(seconds=grace_s)
            for key in others:
                if grace_s == 0:
                    key.revoked_at = now
                elif key.expires_at is None or (aware(key.expires_at) or end) > end:
                    key.expires_at = end
            row, api_key = add_key(session, user, actor_id=actor_id, expires_at=expires_at)
            session.flush()
            record_action(
                session,
                actor_id,
                "key.rotate",
                user.id,
                {
                    "key_id": row.id,
                    "prefix": row.prefix,
                    "grace_s": grace_s,
                    "retired": [k.id for k in others],
                    "expires_at": expires_at.isoformat() if expires_at else None,
                },
            )
            return IssuedKey(key_record(row), api_key, tuple(key_record(k) for k in others))

    def revoke(self, id_or_name: str, *, actor_id: str | None, key_id: str | None = None) -> list[ApiKeyRecord]:
        """Revoke one key of the user (``key_id``) or all their keys that still work; returns those revoked."""
        now = utcnow()
        with self.db.session() as session:
            user = self._user(session, id_or_name)
            query = select(ApiKey).where(ApiKey.user_id == user.id)
            if key_id is not None:
                query = query.where(ApiKey.id == key_id)
                if session.scalars(query).first() is None:
                    raise NotFoundError(f"user {user.id!r} has no key {key_id!r}")
            rows = session.scalars(query.where(ApiKey.revoked_at.is_(None))).all()
            for row in rows:
                row.revoked_at = now
                record_action(session, actor_id, "key.revoke", user.id, {"key_id": row.id, "prefix": row.prefix})
            session.flush()
            return [key_record(r) for r in rows]

    @staticmethod
    def _user(session: Session, id_or_name: str) -> User:
        rows = session.scalars(select(User).where(or_(User.id == id_or_name, User.name == id_or_name))).all()
        if not rows:
            raise NotFoundError(f"no user with id or name {id_or_name!r}")
        by_id = [r for r in rows if r.id == id_or_name]
        return (by_id or list(rows))[0]
