"""Plain frozen records the stores return (never live ORM objects)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from personalize.decoding.config import Personalization


@dataclass(frozen=True)
class UserRecord:
    id: str
    name: str
    role: str
    key_prefix: str
    created_at: datetime

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class ApiKeyRecord:
    """One API key as listings show it: never the key nor its hash."""

    id: str
    user_id: str
    prefix: str
    created_at: datetime
    created_by: str | None
    expires_at: datetime | None
    revoked_at: datetime | None

    def status(self, now: datetime) -> str:
        """``active``, ``expired`` or ``revoked`` at ``now``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


@dataclass(frozen=True)
class KeyGrant:
    """What a successful authentication yields: the user, and which key (and until when) it used."""

    user: UserRecord
    key_id: str
    expires_at: datetime | None


@dataclass(frozen=True)
class IssuedKey:
    """A new key: the only time it exists in clear text."""

    record: ApiKeyRecord
    api_key: str
    retired: tuple[ApiKeyRecord, ...] = ()
    """Keys a rotation revoked or gave an end to."""


@dataclass(frozen=True)
class CreatedUser:
    """A new user and its API key: the only time the key exists in clear text."""

    user: UserRecord
    api_key: str


@dataclass(frozen=True)
class ProfileRecord:
    user_id: str
    weights: Mapping[str, float]
    beta: float
    method: str
    top_k: int
    version: int
    updated_at: datetime
    source: str = "manual"
    """``manual`` (written through the profile endpoint) or ``feedback`` (fitted from choices)."""
    anchor: Mapping[str, float] = field(default_factory=dict)
    """The weights of the last manual write: what feedback fits are pulled toward."""

    def to_personalization(self) -> Personalization:
        return Personalization(weights=dict(self.weights), beta=self.beta, method=self.method, top_k=self.top_k)

    def to_json(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "weights": dict(self.weights),
            "beta": self.beta,
            "method": self.method,
            "top_k": self.top_k,
            "version": self.version,
            "updated_at": self.updated_at.isoformat(),
            "source": self.source,
            "anchor": dict(self.anchor),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProfileRecord:
        return cls(
            user_id=str(data["user_id"]),
            weights={str(k): float(v) for k, v in data["weights"].items()},
            beta=float(data["beta"]),
            method=str(data["method"]),
            top_k=int(data["top_k"]),
            version=int(data["version"]),
            updated_at=datetime.fromisoformat(data["updated_at"]),
            source=str(data.get("source", "manual")),
            anchor={str(k): float(v) for k, v in data.get("anchor", {}).items()},
        )


@dataclass(frozen=True)
class HeadVersionRecord:
    id: int
    objective: str
    version: str
    kind: str
    backbone_id: str
    tokenizer_hash: str
    artifact_path: str
    sha256: str
    size_bytes: int
    calibration: Mapping[str, Any]
    meta: Mapping[str, Any]
    active: bool
    created_by: str | None
    created_at: datetime


@dataclass(frozen=True)
class ObjectiveRecord:
    name: str
    description: str
    created_at: datetime
    versions: tuple[HeadVersionRecord, ...] = field(default=())

    @property
    def active_version(self) -> HeadVersionRecord | None:
        return next((v for v in self.versions if v.active), None)


@dataclass(frozen=True)
class FeedbackRecord:
    """One stored pairwise choice."""

    id: int
    user_id: str
    created_at: datetime
    prompt: str
    chosen: str
    rejected: str
    texts_removed_at: datetime | None
    """When the retention period blanked the texts (None while they are kept)."""
    scores: Mapping[str, tuple[float, float]]
    """Objective -> (reward of chosen, reward of rejected)."""
    rewards: Mapping[str, str]
    head_versions: Mapping[str, str]
    chosen_personalization: Mapping[str, Any] | None
    rejected_personalization: Mapping[str, Any] | None

    def difference(self, objective: str) -> float | None:
        """Reward of chosen minus reward of rejected under ``objective`` (None if it was not scored)."""
        pair = self.scores.get(objective)
        return None if pair is None else pair[0] - pair[1]
