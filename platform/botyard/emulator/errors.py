"""Errors of the emulator: Bot API errors answer bots, control errors answer tests.

Kept apart so the Bot API side can answer exactly what Telegram answers, while
a test that misuses the control API (unknown bot, a button that does not exist)
gets a Python exception that says what went wrong instead.
"""

from __future__ import annotations

from typing import Any

from botyard.errors import BotyardError


class BotAPIError(BotyardError):
    """A failed Bot API call, answered as ``{"ok": false, "error_code", "description"}``."""

    def __init__(
        self, error_code: int, description: str, parameters: dict[str, Any] | None = None
    ) -> None:
        super().__init__(description)
        self.error_code = error_code
        self.description = description
        self.parameters = parameters

    @classmethod
    def bad_request(cls, detail: str) -> BotAPIError:
        """400, as Telegram answers invalid parameters."""
        return cls(400, f"Bad Request: {detail}")

    @classmethod
    def unauthorized(cls) -> BotAPIError:
        """401, as Telegram answers an unknown or revoked token."""
        return cls(401, "Unauthorized")

    @classmethod
    def method_not_found(cls) -> BotAPIError:
        """404, as Telegram answers a method it does not have."""
        return cls(404, "Not Found: method not found")

    @classmethod
    def conflict(cls, detail: str) -> BotAPIError:
        """409, as Telegram answers a second poller or polling while a webhook is set."""
        return cls(409, f"Conflict: {detail}")

    @classmethod
    def too_many_requests(cls, retry_after: int) -> BotAPIError:
        """429, as Telegram answers a flood: retry after ``retry_after`` seconds."""
        return cls(
            429,
            f"Too Many Requests: retry after {retry_after}",
            {"retry_after": retry_after},
        )

    def as_json(self) -> dict[str, Any]:
        """The response body Telegram sends for this error."""
        body: dict[str, Any] = {
            "ok": False,
            "error_code": self.error_code,
            "description": self.description,
        }
        if self.parameters:
            body["parameters"] = dict(self.parameters)
        return body


class ControlError(BotyardError):
    """A test or driver misused the control API; ``status`` is the HTTP control API's answer."""

    status = 400


class UnknownBotError(ControlError, LookupError):
    """No bot with that token (or id, or username) was added to the emulator."""

    status = 404


class EmulatorStoppedError(ControlError):
    """The emulator stopped while a caller was waiting on it."""

    status = 503
