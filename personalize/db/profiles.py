"""User profiles with optimistic concurrency.

Every write bumps ``version``. A write says where its weights came from (``source``): a manual
write also becomes the profile's ``anchor``, the prior of later feedback fits; a feedback write
leaves the anchor as it is. A write that names the version it read is applied
only if that is still the current one (one conditional UPDATE, so two writers
racing on the same version cannot both win); otherwise it raises
:class:`VersionConflictError`.
"""

from __future__ import annotations

from sqlalchemy import select, update

from personalize.db.errors import NotFoundError, VersionConflictError
from personalize.db.models import PROFILE_SOURCES, SOURCE_MANUAL, Profile, utcnow
from personalize.db.records import ProfileRecord
from personalize.db.session import Database
from personalize.decoding.config import Personalization
from personalize.errors import ConfigError


def _record(row: Profile) -> ProfileRecord:
    return ProfileRecord(
        user_id=row.user_id,
        weights={str(k): float(v) for k, v in row.weights.items()},
        beta=row.beta,
        method=row.method,
        top_k=row.top_k,
        version=row.version,
        updated_at=row.updated_at,
        source=row.source,
        anchor={str(k): float(v) for k, v in (row.anchor or {}).items()},
    )


class ProfileStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, user_id: str) -> ProfileRecord:
        with self.db.session() as session:
            row = session.get(Profile, user_id)
            if row is None:
                raise NotFoundError(f"user {user_id!r} has no profile")
            return _record(row)

    def put(
        self,
        user_id: str,
        personalization: Personalization,
        expected_version: int | None = None,
        source: str = SOURCE_MANUAL,
    ) -> ProfileRecord:
        """Replace the profile; with ``expected_version``, only if it is still current."""
        if source not in PROFILE_SOURCES:
            raise ConfigError(f"profile source must be one of {', '.join(PROFILE_SOURCES)}, got {source!r}")
        values = {
            "weights": dict(personalization.weights),
            "beta": personalization.beta,
            "method": personalization.method,
            "top_k": personalization.top_k,
            "version": Profile.version + 1,
            "updated_at": utcnow(),
            "source": source,
        }
        if source == SOURCE_MANUAL:
            values["anchor"] = dict(personalization.weights)
        statement = update(Profile).where(Profile.user_id == user_id).values(**values)
        if expected_version is not None:
            statement = statement.where(Profile.version == expected_version)
        with self.db.session() as session:
            result = session.execute(statement.execution_options(synchronize_session=False))
            if result.rowcount == 0:  # type: ignore[attr-defined]
                current = session.scalar(select(Profile.version).where(Profile.user_id == user_id))
                if current is None:
                    raise NotFoundError(f"user {user_id!r} has no profile")
                raise VersionConflictError(expected_version or 0, current)
            row = session.get(Profile, user_id, populate_existing=True)
            assert row is not None
            return _record(row)
