"""SQLAlchemy 2.0 models of the registry and profile database.

objectives      one row per objective name (conciseness, helpfulness, ...)
head_versions   uploaded heads: artifact location + sha256, identity checks, active flag
users           API callers: name and role
api_keys        each user's API keys: sha256 (never the key), prefix, expiry, revocation
profiles        one per user: weights per objective, beta, method, version (optimistic locking),
                where the weights came from (manual or feedback) and the manual anchor feedback fits lean on
feedback        a user's pairwise choices: the texts (kept for the retention period), each answer's
                rewards per objective, and the personalization each answer was generated with
audit_log       admin actions: who did what to which target, when
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy import text as sql_text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

ROLE_ADMIN = "admin"
ROLE_USER = "user"
ROLES = (ROLE_ADMIN, ROLE_USER)
SOURCE_MANUAL = "manual"
SOURCE_FEEDBACK = "feedback"
PROFILE_SOURCES = (SOURCE_MANUAL, SOURCE_FEEDBACK)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, datetime: DateTime(timezone=True)}


class Objective(Base):
    __tablename__ = "objectives"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    versions: Mapped[list[HeadVersion]] = relationship(
        back_populates="objective_row", cascade="all, delete-orphan", passive_deletes=True
    )


class HeadVersion(Base):
    __tablename__ = "head_versions"
    __table_args__ = (
        Index("uq_head_versions_objective_version", "objective", "version", unique=True),
        # At most one active version per objective, enforced by the database itself.
        Index(
            "uq_head_versions_one_active",
            "objective",
            unique=True,
            postgresql_where=sql_text("active"),
            sqlite_where=sql_text("active"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    objective: Mapped[str] = mapped_column(String(64), ForeignKey("objectives.name", ondelete="CASCADE"), index=True)
    version: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    backbone_id: Mapped[str] = mapped_column(String(256))
    tokenizer_hash: Mapped[str] = mapped_column(String(128))
    artifact_path: Mapped[str] = mapped_column(String(512))
    """Relative to the artifact root: ``<sha256[:2]>/<sha256>``."""
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(Integer)
    calibration: Mapped[dict[str, Any]] = mapped_column(default=dict)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """The full head.json, for listing without touching the artifact."""
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    created_by: Mapped[str | None] = mapped_column(String(32), ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    objective_row: Mapped[Objective] = relationship(back_populates="versions")


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    role: Mapped[str] = mapped_column(String(16), default=ROLE_USER)
    key_prefix: Mapped[str] = mapped_column(String(16))
    """The first characters of the user's newest key, to tell keys apart in listings; not a secret."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    profile: Mapped[Profile | None] = relationship(
        back_populates="user", cascade="all, delete-orphan", passive_deletes=True
    )
    keys: Mapped[list[ApiKey]] = relationship(back_populates="user", cascade="all, delete-orphan", passive_deletes=True)


class ApiKey(Base):
    """One API key of a user. A key works while it is neither revoked nor past ``expires_at``."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(32), ForeignKey("users.id", ondelete="CASCADE"), index=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    """The first characters of the key, to tell keys apart in listings; not a secret."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(32))
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)

    user: Mapped[User] = relationship(back_populates="keys")


class Profile(Base):
    __tablename__ = "profiles"

    user_id: Mapped[str] = mapped_column(String(32), ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    weights: Mapped[dict[str, Any]] = mapped_column(default=dict)
    beta: Mapped[float] = mapped_column(Float, default=1.0)
    method: Mapped[str] = mapped_column(String(16), default="vas")
    top_k: Mapped[int] = mapped_column(Integer, default=20)
    version: Mapped[int] = mapped_column(Integer, default=1)
    """Bumped on every write; a write naming an older version is refused (lost update)."""
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    source: Mapped[str] = mapped_column(String(16), default=SOURCE_MANUAL, server_default=SOURCE_MANUAL)
    """Where the weights came from: ``manual`` (a write of the profile) or ``feedback`` (fitted from choices)."""
    anchor: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    """The weights of the last manual write: the prior every feedback fit is pulled toward."""

    user: Mapped[User] = relationship(back_populates="profile")


class Feedback(Base):
    """One pairwise choice of a user: ``chosen`` was preferred to ``rejected`` as answers to ``prompt``."""

    __tablename__ = "feedback"
    __table_args__ = (Index("ix_feedback_user_id_id", "user_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(32), ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    prompt: Mapped[str] = mapped_column(Text, default="")
    chosen: Mapped[str] = mapped_column(Text, default="")
    rejected: Mapped[str] = mapped_column(Text, default="")
    texts_removed_at: Mapped[datetime | None] = mapped_column(default=None)
    """Set when the retention period blanked the three texts (the scores stay)."""
    scores: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """Objective -> [reward of chosen, reward of rejected], under the reward its active head named."""
    rewards: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """Objective -> the reward function that scored it."""
    head_versions: Mapped[dict[str, Any]] = mapped_column(default=dict)
    chosen_personalization: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    rejected_personalization: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)


class AuditEntry(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor_id: Mapped[str | None] = mapped_column(String(32))
    """Kept as plain text (no foreign key): the log outlives deleted users."""
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(256))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
