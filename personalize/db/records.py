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
