"""Errors raised by the stores (all under :class:`~personalize.errors.PersonalizeError`).

StoreError
├── NotFoundError       the user, profile, objective or head version does not exist
├── AlreadyExistsError  a user name or an (objective, version) pair is taken
└── VersionConflictError a profile write named a version that is no longer current
"""

from __future__ import annotations

from personalize.errors import PersonalizeError


class StoreError(PersonalizeError):
    """A database-backed store refused an operation."""


class NotFoundError(StoreError, LookupError):
    """The user, profile, objective or head version does not exist."""


class AlreadyExistsError(StoreError):
    """A user name or an (objective, version) pair is already taken."""


class VersionConflictError(StoreError):
    """A profile write expected a version that another write has replaced (lost update)."""

    def __init__(self, expected: int, current: int) -> None:
        self.expected = expected
        self.current = current
        super().__init__(
            f"profile version {expected} is stale; the current version is {current}: "
            "re-read the profile and apply your change to it"
        )
