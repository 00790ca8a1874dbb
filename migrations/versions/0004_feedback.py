"""pairwise feedback: the feedback table; profiles record their source and manual anchor

Existing profiles become ``manual`` with their current weights as anchor.

Revision ID: 0004_feedback
Revises: 0003_api_keys
Create Date: 2026-12-06 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_feedback"
down_revision: str | None = "0003_api_keys"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("chosen", sa.Text(), nullable=False),
        sa.Column("rejected", sa.Text(), nullable=False),
        sa.Column("texts_removed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("scores", sa.JSON(), nullable=False),
        sa.Column("rewards", sa.JSON(), nullable=False),
        sa.Column("head_versions", sa.JSON(), nullable=False),
        sa.Column("chosen_personalization", sa.JSON(), nullable=True),
        sa.Column("rejected_personalization", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_feedback_created_at", "feedback", ["created_at"], unique=False)
    op.create_index("ix_feedback_user_id_id", "feedback", ["user_id", "id"], unique=False)
    with op.batch_alter_table("profiles") as batch:
        batch.add_column(sa.Column("source", sa.String(length=16), server_default="manual", nullable=False))
        batch.add_column(sa.Column("anchor", sa.JSON(), server_default="{}", nullable=False))
    op.execute("UPDATE profiles SET anchor = weights")


def downgrade() -> None:
    with op.batch_alter_table("profiles") as batch:
        batch.drop_column("anchor")
        batch.drop_column("source")
    op.drop_index("ix_feedback_user_id_id", table_name="feedback")
    op.drop_index("ix_feedback_created_at", table_name="feedback")
    op.drop_table("feedback")
