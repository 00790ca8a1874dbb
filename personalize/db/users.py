"""Users and API keys.

A key is 256 bits from :mod:`secrets`; only its sha256 is stored (a fast hash is
enough for a random key of that size: there is nothing to brute-force), and the
stored digest is compared with :func:`hmac.compare_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError

from personalize.db.audit import record_action
from personalize.db.errors import AlreadyExistsError, NotFoundError
from personalize.db.models import ROLE_USER, ROLES, Profile, User
from personalize.db.records import CreatedUser, UserRecord
from personalize.db.session import Database
from personalize.errors import ConfigError

KEY_PREFIX = "pz-"
USER_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$")


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def _record(row: User) -> UserRecord:
    return UserRecord(row.id, row.name, row.role, row.key_prefix, row.created_at)


class UserStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, name: str, role: str = ROLE_USER, *, actor_id: str | None = None) -> CreatedUser:
        """Create a user with a default profile; the returned key is never stored."""
        if not isinstance(name, str) or not USER_NAME_PATTERN.match(name):
            raise ConfigError(
                f"user name must match {USER_NAME_PATTERN.pattern} (letters, digits, '_.@-'), got {name!r}"
            )
        if role not in ROLES:
            raise ConfigError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        api_key = new_api_key()
        row = User(
            id=uuid.uuid4().hex,
            name=name,
            role=role,
            api_key_sha256=hash_api_key(api_key),
            key_prefix=api_key[: len(KEY_PREFIX) + 6],
        )
        try:
            with self.db.session() as session:
                session.add(row)
                session.flush()
                session.add(Profile(user_id=row.id, weights={}))
                record_action(session, actor_id, "user.create", row.id, {"name": name, "role": role})
        except IntegrityError as exc:
            raise AlreadyExistsError(f"a user named {name!r} already exists") from exc
        return CreatedUser(_record(row), api_key)

    def authenticate(self, api_key: str) -> UserRecord | None:
        """The user owning ``api_key``, or None."""
        digest = hash_api_key(api_key)
        with self.db.session() as session:
            row = session.scalars(select(User).where(User.api_key_sha256 == digest)).first()
            if row is None or not hmac.compare_digest(row.api_key_sha256, digest):
                return None
            return _record(row)

    def get(self, id_or_name: str) -> UserRecord:
        """A user by id, or else by name."""
        with self.db.session() as session:
            rows = session.scalars(select(User).where(or_(User.id == id_or_name, User.name == id_or_name))).all()
            if not rows:
                raise NotFoundError(f"no user with id or name {id_or_name!r}")
            by_id = [r for r in rows if r.id == id_or_name]
            return _record((by_id or list(rows))[0])

    def all(self) -> list[UserRecord]:
        with self.db.session() as session:
            return [_record(r) for r in session.scalars(select(User).order_by(User.created_at))]
