"""Errors that cross RPC as themselves.

Registered with nameko so a caller gets the same class back (not a RemoteError), and
the gateway can map each to an HTTP status. Their args stay JSON-serialisable because
nameko rebuilds them as `cls(*args)` on the caller's side.
"""
from __future__ import annotations

from typing import Any

from nameko.exceptions import deserialize_to_instance


class SanadError(Exception):
    """Base of the errors a caller is expected to handle."""

    status = 500

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, details or {})
        self.message = message
        self.details = details or {}

    def __str__(self) -> str:
        return f"{self.message} {self.details}" if self.details else self.message


@deserialize_to_instance
class ValidationError(SanadError):
    """Bad input; `details` maps each field to its messages."""

    status = 422

    @property
    def fields(self) -> dict[str, Any]:
        return self.details


@deserialize_to_instance
class NotFound(SanadError):
    status = 404


@deserialize_to_instance
class Conflict(SanadError):
    """A uniqueness clash, a stale version or a transition the current state refuses."""

    status = 409


@deserialize_to_instance
class Forbidden(SanadError):
    status = 403


# Expected errors: logged as outcomes, not as crashes.
EXPECTED_ERRORS = (ValidationError, NotFound, Conflict, Forbidden)


def stale_version(what: str, version: int, current: int) -> Conflict:
    """The answer to a write made at a version someone else has moved on from."""
    return Conflict(f"The {what} changed since version {version}.",
                    {"version": [f"Current version is {current}."]})
