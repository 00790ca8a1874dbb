"""api keys in their own table: several per user, expiry and revocation

Each user's existing key moves to ``api_keys`` (same sha256 and prefix, so every
key keeps working); ``users.api_key_sha256`` goes. Downgrading gives each user
back the digest of their newest key that still works (revoked users get a
random digest nobody holds, so they stay locked out).

Revision ID: 0003_api_keys
Revises: 0001
Create Date: 2026-12-01 09:00:00
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0003_api_keys"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=32), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sha256"),
    )
    op.create_index("ix_api_keys_user_id", "api_keys", ["user_id"], unique=False)
    # A migrated key takes its user's id as its own (one key per user so far: unique).
    op.execute(
        "INSERT INTO api_keys (id, user_id, sha256, prefix, created_at) "
        "SELECT id, id, api_key_sha256, key_prefix, created_at FROM users"
    )
    with op.batch_alter_table("users") as batch:  # its unique constraint goes with it
        batch.drop_column("api_key_sha256")


def downgrade() -> None:
    conn = op.get_bind()
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("api_key_sha256", sa.String(length=64), nullable=True))
    now = datetime.now(UTC)
    api_keys = sa.table(
        "api_keys",
        sa.column("user_id", sa.String),
        sa.column("sha256", sa.String),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("expires_at", sa.DateTime(timezone=True)),
        sa.column("revoked_at", sa.DateTime(timezone=True)),
    )
    keys = conn.execute(
        sa.select(api_keys.c.user_id, api_keys.c.sha256, api_keys.c.expires_at, api_keys.c.revoked_at).order_by(
            api_keys.c.created_at
        )
    ).all()
    newest: dict[str, str] = {}
    for user_id, sha256, expires_at, revoked_at in keys:
        if expires_at is not None and expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=UTC)
        if revoked_at is None and (expires_at is None or expires_at > now):
            newest[user_id] = sha256
    for (user_id,) in conn.execute(sa.text("SELECT id FROM users")).all():
        digest = newest.get(user_id) or hashlib.sha256(secrets.token_bytes(32)).hexdigest()
        conn.execute(sa.text("UPDATE users SET api_key_sha256 = :d WHERE id = :u"), {"d": digest, "u": user_id})
    with op.batch_alter_table("users") as batch:
        batch.alter_column("api_key_sha256", existing_type=sa.String(length=64), nullable=False)
        batch.create_unique_constraint("users_api_key_sha256_key", ["api_key_sha256"])
    op.drop_index("ix_api_keys_user_id", table_name="api_keys")
    op.drop_table("api_keys")
