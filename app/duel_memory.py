"""The answers a user's earlier duels on a prompt generated, kept for their next duel on the same prompt.

A duel generates ``duel_candidates x duel_samples`` answers and shows two. A later duel of the same user on
the same prompt (the Teach page asks every duel on one prompt) chooses its pair among its new answers *and*
the kept ones, never a pair it has asked about already: the more answers a pair is chosen from, the more a
choice teaches (docs/feedback.md, "Kept answers").

Kept per user and prompt, with their rewards, what steered them and which pairs were asked: in Redis when
it is configured (one hash per user, ``{prefix}:duels:{user}``, a field per prompt digest), otherwise in
this process (at most ``LOCAL_ENTRIES`` user-prompt entries, the oldest dropped first); at most
``PROMPTS_PER_USER`` prompts per user either way. An entry lives ``duel_keep_s`` after the duel that
wrote it, never longer than the feedback retention period; nothing is kept when ``duel_keep`` or
``feedback_retention_days`` is 0. Answers steered by other head versions than the
active ones are dropped (what they were scored and steered under has changed), and deleting every
comparison of a user forgets them too. It is a cache: two duels of one user on one prompt at once keep
the answers of the one that finishes last, and while Redis cannot be reached nothing is kept or read.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from app.cache import Cache
from personalize.feedback import PairChoice, UtilityFit, most_informative_pair

LOCAL_ENTRIES = 4096
"""Most user-prompt entries kept in this process when there is no Redis."""
PROMPTS_PER_USER = 64
"""Most prompts one user has kept answers to: past it, another of the user's entries is dropped (in Redis one
drawn at random, in this process the oldest), so a user who duels on ever new prompts holds bounded memory."""


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class KeptAnswer:
    """One answer of an earlier duel: what a duel returns of it, and its rewards."""

    text: str
    finish_reason: str | None
    personalization: dict[str, Any]
    head_versions: dict[str, str]
    rewards: tuple[float, ...]
    """Reward per objective of the entry's ``heads`` (in that order)."""

    @property
    def digest(self) -> str:
        return text_digest(self.text)


class Chosen(NamedTuple):
    """The pair a duel shows, how informative it is, and what is kept after showing it."""

    first: KeptAnswer
    second: KeptAnswer
    pair: PairChoice
    kept: KeptDuels


@dataclass(frozen=True)
class KeptDuels:
    """A user's kept answers to one prompt and the pairs of them already asked about."""

    heads: tuple[tuple[str, str], ...] = ()
    """(objective, version) of the active heads the answers were steered and scored under, sorted."""
    answers: tuple[KeptAnswer, ...] = ()
    asked: frozenset[tuple[str, str]] = field(default_factory=frozenset)
    """Pairs of text digests (sorted) shown together in a duel."""

    def rewards(self, objectives: Sequence[str]) -> np.ndarray:
        """(N, K) the kept answers' rewards in the order of ``objectives`` (the entry's heads')."""
        order = [name for name, _ in self.heads]
        columns = [order.index(name) for name in objectives]
        return np.array([[a.rewards[c] for c in columns] for a in self.answers], dtype=np.float64).reshape(
            len(self.answers), len(objectives)
        )

    def asked_pairs(self, digests: Sequence[str]) -> list[tuple[int, int]]:
        """Index pairs of ``digests`` (answers in a duel's order) whose texts were already shown together."""
        where: dict[str, list[int]] = {}
        for i, digest in enumerate(digests):
            where.setdefault(digest, []).append(i)
        return [(i, j) for a, b in self.asked for i in where.get(a, ()) for j in where.get(b, ())]

    def choose(self, fit: UtilityFit, new: Sequence[KeptAnswer], rewards: np.ndarray, keep: int) -> Chosen:
        """Of the kept answers and a duel's ``new`` ones (``rewards``: (N + C, K) theirs in that order, the
        fit's objectives), the pair whose choice is expected to teach ``fit`` the most, never one asked
        already while another is left, and the entry once it is shown (:meth:`after`, ``keep``)."""
        answers = [*self.answers, *new]
        pair = most_informative_pair(fit, rewards, exclude=self.asked_pairs([a.digest for a in answers]))
        first, second = answers[pair.first], answers[pair.second]
        return Chosen(first, second, pair, self.after(new, (first.digest, second.digest), keep))

    def after(self, new: Sequence[KeptAnswer], shown: tuple[str, str], keep: int) -> KeptDuels:
        """The entry once a duel added its answers ``new`` and showed the pair of digests ``shown``: the
        ``keep`` most recent distinct answers, and the pairs among them asked about."""
        latest: dict[str, KeptAnswer] = {}
        for answer in (*self.answers, *new):
            latest.pop(answer.digest, None)
            latest[answer.digest] = answer  # a repeated text moves to the end
        answers = tuple(latest.values())[-keep:] if keep > 0 else ()
        digests = {a.digest for a in answers}
        asked = {pair for pair in (*self.asked, tuple(sorted(shown))) if pair[0] in digests and pair[1] in digests}
        return KeptDuels(self.heads, answers, frozenset((a, b) for a, b in asked))

    def to_json(self, stored_at: float) -> str:
        return json.dumps(
            {
                "stored_at": stored_at,
                "heads": [list(h) for h in self.heads],
                "answers": [
                    {
                        "text": a.text,
                        "finish_reason": a.finish_reason,
                        "personalization": a.personalization,
                        "head_versions": a.head_versions,
                        "rewards": list(a.rewards),
                    }
                    for a in self.answers
                ],
                "asked": sorted([list(p) for p in self.asked]),
            }
        )

    @classmethod
    def from_json(cls, payload: str) -> tuple[float, KeptDuels]:
        data = json.loads(payload)
        answers = tuple(
            KeptAnswer(
                text=str(a["text"]),
                finish_reason=a.get("finish_reason"),
                personalization=dict(a.get("personalization") or {}),
                head_versions={str(k): str(v) for k, v in (a.get("head_versions") or {}).items()},
                rewards=tuple(float(r) for r in a["rewards"]),
            )
            for a in data.get("answers", [])
        )
        heads = tuple((str(name), str(version)) for name, version in data.get("heads", []))
        asked = frozenset((str(a), str(b)) for a, b in data.get("asked", []))
        return float(data.get("stored_at", 0.0)), cls(heads, answers, asked)


class DuelMemory:
    """Load and store :class:`KeptDuels` per user and prompt (Redis, else this process)."""

    def __init__(self, cache: Cache, *, keep: int, ttl_s: float) -> None:
        self.cache = cache
        self.keep = keep
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._local: dict[tuple[str, str], str] = {}
        """Without Redis: (user, prompt digest) -> the entry's JSON, oldest written first."""

    @property
    def enabled(self) -> bool:
        return self.keep > 0 and self.ttl_s > 0

    @staticmethod
    def _name(user_id: str) -> str:
        return f"duels:{user_id}"

    def load(self, user_id: str, prompt: str, heads: tuple[tuple[str, str], ...]) -> KeptDuels:
        """The user's kept answers to ``prompt`` if they were steered by ``heads`` and are recent enough."""
        empty = KeptDuels(heads)
        if not self.enabled:
            return empty
        field_name = text_digest(prompt)
        if self.cache.configured:
            payload = self.cache.get_field(self._name(user_id), field_name)
        else:
            with self._lock:
                payload = self._local.get((user_id, field_name))
        if not isinstance(payload, str):
            return empty
        try:
            stored_at, kept = KeptDuels.from_json(payload)
        except (ValueError, KeyError, TypeError):
            return empty
        if time.time() - stored_at > self.ttl_s or kept.heads != heads:
            return empty
        return kept

    def store(self, user_id: str, prompt: str, kept: KeptDuels) -> None:
        if not self.enabled:
            return
        field_name = text_digest(prompt)
        payload = kept.to_json(time.time())
        if self.cache.configured:
            self.cache.put_field(self._name(user_id), field_name, payload, int(self.ttl_s), PROMPTS_PER_USER)
            return
        with self._lock:
            self._local.pop((user_id, field_name), None)
            self._local[(user_id, field_name)] = payload
            theirs = [key for key in self._local if key[0] == user_id]  # oldest written first
            for key in theirs[: max(0, len(theirs) - PROMPTS_PER_USER)]:
                del self._local[key]
            while len(self._local) > LOCAL_ENTRIES:
                self._local.pop(next(iter(self._local)))

    def forget(self, user_id: str) -> None:
        """Drop every kept answer of the user (their comparisons were deleted)."""
        if self.cache.configured:
            self.cache.delete(self._name(user_id))
        with self._lock:
            for key in [k for k in self._local if k[0] == user_id]:
                del self._local[key]
