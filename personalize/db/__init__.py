"""The registry and profile database: SQLAlchemy models, migrations and stores."""

from personalize.db.audit import AuditStore
from personalize.db.errors import AlreadyExistsError, NotFoundError, StoreError, VersionConflictError
from personalize.db.heads import HeadStore
from personalize.db.profiles import ProfileStore
from personalize.db.records import (
    CreatedUser,
    HeadVersionRecord,
    ObjectiveRecord,
    ProfileRecord,
    UserRecord,
)
from personalize.db.session import Database
from personalize.db.users import UserStore

__all__ = [
    "AlreadyExistsError",
    "AuditStore",
    "CreatedUser",
    "Database",
    "HeadStore",
    "HeadVersionRecord",
    "NotFoundError",
    "ObjectiveRecord",
    "ProfileRecord",
    "ProfileStore",
    "StoreError",
    "UserRecord",
    "UserStore",
    "VersionConflictError",
]
