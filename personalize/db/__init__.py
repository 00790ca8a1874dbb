"""The registry and profile database: SQLAlchemy models, migrations and stores."""

from personalize.db.audit import AuditStore
from personalize.db.errors import AlreadyExistsError, NotFoundError, StoreError, VersionConflictError
from personalize.db.feedback import FeedbackStore, NewFeedback
from personalize.db.heads import HeadStore
from personalize.db.keys import ApiKeyStore
from personalize.db.profiles import ProfileStore
from personalize.db.records import (
    ApiKeyRecord,
    CreatedUser,
    FeedbackRecord,
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
    "FeedbackRecord",
    "FeedbackStore",
    "HeadStore",
    "HeadVersionRecord",
    "NewFeedback",
    "NotFoundError",
    "ObjectiveRecord",
    "ProfileRecord",
    "ProfileStore",
    "StoreError",
    "UserRecord",
    "UserStore",
    "VersionConflictError",
]
