"""What went wrong, for the page: failed handlers, bots that cannot start, rejected reloads.

The Supervisor and the runners report these in the log, with ``extra`` fields
saying what happened (see :mod:`botyard.runtime.supervisor`); :class:`ProblemLog`
is a logging handler that hands them to the sandbox, so the page shows them
where they happened instead of only in the terminal. Every text is redacted of
anything shaped like a token before it leaves here.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from botyard.tokens import redact

#: Loggers whose records name bot events (the Supervisor's and the runners').
LOGGERS = ("botyard.supervisor", "botyard.bot")


@dataclass(frozen=True)
class HandlerFailure:
    """A handler raised, or its update was given up: what the chat shows."""

    bot: str
    #: The simulated user whose action failed (their private chat's id), if known.
    user_id: int | None
    #: What the chat says: ``"the handler failed: ZeroDivisionError: division by zero"``.
    summary: str
    traceback: str


class ProblemLog(logging.Handler):
    """Collects the bot events of the log; install with :meth:`attach`, remove with :meth:`detach`.

    ``cannot_start`` holds each bot's last start failure (the sandbox drops it once
    the bot runs); ``reload_rejected`` the errors of the last rejected reload.
    """

    def __init__(self, on_failure: Callable[[HandlerFailure], None]) -> None:
        super().__init__(level=logging.ERROR)
        self._on_failure = on_failure
        self.cannot_start: dict[str, str] = {}
        self.reload_rejected: str | None = None

    def attach(self) -> None:
        for name in LOGGERS:
            logging.getLogger(name).addHandler(self)

    def detach(self) -> None:
        for name in LOGGERS:
            logging.getLogger(name).removeHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "event", None)
        if event == "handler_failed":
            details = _traceback(record)
            lines = [line for line in details.splitlines() if line.strip()]
            self._on_failure(
                HandlerFailure(
                    bot=record.bot_name,  # type: ignore[attr-defined]  # set through ``extra``
                    user_id=record.user_id,  # type: ignore[attr-defined]
                    summary=redact(
                        f"the handler failed: {lines[-1].strip() if lines else 'an exception'}"
                    ),
                    traceback=redact(details),
                )
            )
        elif event == "update_given_up":
            reason = record.getMessage().partition(" given up: ")[2]
            self._on_failure(
                HandlerFailure(
                    bot=record.bot_name,  # type: ignore[attr-defined]
                    user_id=record.user_id,  # type: ignore[attr-defined]
                    summary=redact(f"given up: {reason.removesuffix('; update confirmed')}"),
                    traceback="",
                )
            )
        elif event == "cannot_start":
            why = record.getMessage().partition("cannot start:")[2].strip()
            self.cannot_start[record.bot_name] = redact(why)  # type: ignore[attr-defined]
        elif event == "reload_rejected":
            self.reload_rejected = redact(record.getMessage())


def _traceback(record: logging.LogRecord) -> str:
    """The record's traceback: from the exception, or the text the log's redacting filter
    left in its place (botyard's logging drops the exception object itself)."""
    if record.exc_info and record.exc_info[1] is not None:
        return "".join(traceback.format_exception(record.exc_info[1]))
    return record.exc_text or ""
