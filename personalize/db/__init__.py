"""The registry and profile database: SQLAlchemy models, migrations and stores."""

from personalize.db.audit import AuditStore
from personalize.db.errors import AlreadyExistsError, NotFoundError, StoreError, VersionConflictError
from personalize.db.heads import HeadStore
from personalize.db.keys import ApiKeyStore
from personalize.db.profiles import ProfileStore
from personalize.db.records import (
    ApiKeyRecord,
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
    "ApiKeyRecord",
    "ApiKeyStore",
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
