"""Users' pairwise choices: add, list, delete, and blank the texts past their retention period.

A comparison keeps its rewards (what the fit needs) for as long as it exists; its three texts
(prompt, chosen, rejected) only until :meth:`FeedbackStore.remove_texts` blanks them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update

from personalize.db.models import Feedback, utcnow
from personalize.db.records import FeedbackRecord
from personalize.db.session import Database


@dataclass(frozen=True)
class NewFeedback:
    """What one comparison stores."""

    prompt: str
    chosen: str
    rejected: str
    scores: Mapping[str, tuple[float, float]]
    """Objective -> (reward of chosen, reward of rejected)."""
    rewards: Mapping[str, str]
    head_versions: Mapping[str, str]
    chosen_personalization: Mapping[str, Any] | None = None
    rejected_personalization: Mapping[str, Any] | None = None


def _record(row: Feedback) -> FeedbackRecord:
    return FeedbackRecord(
        id=row.id,
        user_id=row.user_id,
        created_at=row.created_at,
        prompt=row.prompt,
        chosen=row.chosen,
        rejected=row.rejected,
        texts_removed_at=row.texts_removed_at,
        scores={str(k): (float(v[0]), float(v[1])) for k, v in row.scores.items()},
        rewards={str(k): str(v) for k, v in row.rewards.items()},
        head_versions={str(k): str(v) for k, v in row.head_versions.items()},
        chosen_personalization=row.chosen_personalization,
        rejected_personalization=row.rejected_personalization,
    )


class FeedbackStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, user_id: str, item: NewFeedback, *, keep_texts: bool = True) -> FeedbackRecord:
        """Store one comparison (its texts only when ``keep_texts``)."""
        now = utcnow()
        row = Feedback(
            user_id=user_id,
            created_at=now,
            prompt=item.prompt if keep_texts else "",
            chosen=item.chosen if keep_texts else "",
            rejected=item.rejected if keep_texts else "",
            texts_removed_at=None if keep_texts else now,
            scores={k: [float(c), float(r)] for k, (c, r) in item.scores.items()},
            rewards=dict(item.rewards),
            head_versions=dict(item.head_versions),
            chosen_personalization=dict(item.chosen_personalization) if item.chosen_personalization else None,
            rejected_personalization=dict(item.rejected_personalization) if item.rejected_personalization else None,
        )
        with self.db.session() as session:
            session.add(row)
            session.flush()
            return _record(row)

    def list(self, user_id: str, *, limit: int | None = None, before_id: int | None = None) -> list[FeedbackRecord]:
        """The user's comparisons, newest first (``before_id``: only older ones than that id)."""
        statement = select(Feedback).where(Feedback.user_id == user_id).order_by(Feedback.id.desc())
        if before_id is not None:
            statement = statement.where(Feedback.id < before_id)
        if limit is not None:
            statement = statement.limit(limit)
        with self.db.session() as session:
            return [_record(row) for row in session.scalars(statement).all()]

    def count(self, user_id: str) -> int:
        with self.db.session() as session:
            return int(session.scalar(select(func.count(Feedback.id)).where(Feedback.user_id == user_id)) or 0)

    def delete(self, user_id: str, feedback_id: int) -> bool:
        """Delete one of the user's comparisons; False when the user has none with that id."""
        statement = delete(Feedback).where(Feedback.user_id == user_id, Feedback.id == feedback_id)
        with self.db.session() as session:
            return bool(session.execute(statement).rowcount)  # type: ignore[attr-defined]

    def delete_all(self, user_id: str) -> int:
        """Delete every comparison of the user; how many there were."""
        with self.db.session() as session:
            return int(session.execute(delete(Feedback).where(Feedback.user_id == user_id)).rowcount)  # type: ignore[attr-defined]

    def remove_texts(self, older_than: datetime) -> int:
        """Blank the texts of every comparison made before ``older_than`` (the rewards stay); how many."""
        statement = (
            update(Feedback)
            .where(Feedback.created_at < older_than, Feedback.texts_removed_at.is_(None))
            .values(prompt="", chosen="", rejected="", texts_removed_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        with self.db.session() as session:
            return int(session.execute(statement).rowcount)  # type: ignore[attr-defined]
