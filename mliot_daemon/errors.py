"""Domain errors: why an operation of the serving core (or the store beneath it) failed.

Every surface gets the same errors: the HTTP layer maps them to status codes (its one table,
``actors/server/http.py``), WebSocket streams send their message, the MQTT bridge publishes
their ``kind`` on ``{prefix}/{app}/errors`` and retries ``Unavailable`` ones. Each carries a
message for people and, where there are several problems, every one of them in ``details``.
"""

from __future__ import annotations

from typing import ClassVar


class DomainError(Exception):
    """An operation that cannot be done as asked; ``kind`` names which way, for machines."""

    kind: ClassVar[str] = "error"

    def __init__(self, message: str, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []

    def __str__(self) -> str:
        return f"{self.message}: {'; '.join(self.details)}" if self.details else self.message


class Malformed(DomainError):
    """The request is not even the right format (not JSON, a bad header)."""

    kind = "malformed"


class Invalid(DomainError):
    """Well-formed, but the content is wrong (shape, NaN, unknown label, bad spec)."""

    kind = "invalid"


class NotFound(DomainError):
    """No such app, prediction id or model version."""

    kind = "not_found"


class UnknownApp(NotFound):
    """No app of that name (as opposed to an unknown id within an app)."""


class Conflict(DomainError):
    """The app's state forbids it (declared in the config file, samples of another shape)."""

    kind = "conflict"


class TooLarge(DomainError):
    """Over a configured size limit."""

    kind = "too_large"


class Unavailable(DomainError):
    """Not now, for the reason given (no model yet, placement refused, a timeout, the store);
    worth trying again later."""

    kind = "unavailable"
