"""Bodies of the API key endpoints (app/routes/keys.py)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.schemas import KeyLifetime
from personalize.db.keys import MAX_GRACE_S


class KeyRotate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace_seconds: Annotated[int, Field(ge=0, le=MAX_GRACE_S)] = Field(
        default=0,
        description="How long the user's other keys keep working (0, the default: they stop now).",
    )
    expires_in_seconds: KeyLifetime | None = Field(
        default=None, description="The new key stops working this many seconds from now (omitted: never)."
    )


class KeyOut(BaseModel):
    """An API key as listings show it: never the key itself."""

    id: str
    user_id: str
    prefix: str = Field(description="The key's first characters, to tell keys apart.")
    status: Literal["active", "expired", "revoked"]
    created_at: str
    created_by: str | None
    expires_at: str | None
    revoked_at: str | None


class KeyList(BaseModel):
    object: Literal["list"]
    data: list[KeyOut]


class KeyIssued(BaseModel):
    api_key: str = Field(description="The new key: shown only in this response; only its hash is stored.")
    key: KeyOut
    retired: list[KeyOut] = Field(description="The user's other keys, revoked now or ending after the grace period.")
