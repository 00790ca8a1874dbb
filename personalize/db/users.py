"""Users: create, look up, list. Their API keys live in :mod:`personalize.db.keys`."""

from __future__ import annotations

import re
import uuid
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError

from personalize.db.audit import record_action
from personalize.db.errors import AlreadyExistsError, NotFoundError
from personalize.db.keys import ApiKeyStore, add_key, check_expiry, hash_api_key, new_api_key, user_record
from personalize.db.models import ROLE_USER, ROLES, Profile, User, utcnow
from personalize.db.records import CreatedUser, UserRecord
from personalize.db.session import Database
from personalize.errors import ConfigError

USER_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$")

__all__ = ["USER_NAME_PATTERN", "UserStore", "hash_api_key", "new_api_key"]


class UserStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.keys = ApiKeyStore(db)

    def create(
        self, name: str, role: str = ROLE_USER, *, actor_id: str | None = None, expires_at: datetime | None = None
    ) -> CreatedUser:
        """Create a user with a default profile and one API key; the returned key is never stored."""
        if not isinstance(name, str) or not USER_NAME_PATTERN.match(name):
            raise ConfigError(
                f"user name must match {USER_NAME_PATTERN.pattern} (letters, digits, '_.@-'), got {name!r}"
            )
        if role not in ROLES:
            raise ConfigError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        check_expiry(expires_at, utcnow())
        row = User(id=uuid.uuid4().hex, name=name, role=role, key_prefix="")
        try:
            with self.db.session() as session:
                session.add(row)
                session.flush()
                session.add(Profile(user_id=row.id, weights={}))
                key, api_key = add_key(session, row, actor_id=actor_id, expires_at=expires_at)
                session.flush()
                record_action(session, actor_id, "user.create", row.id, {"name": name, "role": role, "key_id": key.id})
        except IntegrityError as exc:
            raise AlreadyExistsError(f"a user named {name!r} already exists") from exc
        return CreatedUser(user_record(row), api_key)

    def authenticate(self, api_key: str) -> UserRecord | None:
        """The user owning ``api_key`` if the key works now, or None."""
        grant = self.keys.authenticate(api_key)
        return grant.user if grant is not None else None

    def get(self, id_or_name: str) -> UserRecord:
        """A user by id, or else by name."""
        with self.db.session() as session:
            rows = session.scalars(select(User).where(or_(User.id == id_or_name, User.name == id_or_name))).all()
            if not rows:
                raise NotFoundError(f"no user with id or name {id_or_name!r}")
            by_id = [r for r in rows if r.id == id_or_name]
            return user_record((by_id or list(rows))[0])

    def all(self) -> list[UserRecord]:
        with self.db.session() as session:
            return [user_record(r) for r in session.scalars(select(User).order_by(User.created_at))]
