"""Logging for the platform: one line per event, never a secret, never a whole document.

What each level shows: INFO, one line per bot event (start, stop, status,
reload, cleanup); WARNING and ERROR, what went wrong, with tracebacks; DEBUG,
botyard's own details. Libraries are capped at INFO whatever the level
(:data:`CAPPED_LIBRARIES`): PyMongo's command log prints whole commands and
replies at DEBUG, users' FSM data and messages among them. ``--debug-logger
pymongo`` lifts the cap for one library when a problem needs it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from botyard.tokens import TokenRedactor

LogFormat = Literal["text", "json"]

#: Loggers kept at INFO or above unless named explicitly (their DEBUG output
#: holds commands, documents and requests: users' data).
CAPPED_LIBRARIES = ("pymongo", "aiohttp", "aiogram", "apscheduler", "asyncio")
#: Longest line of a message or traceback that is logged; the rest is counted, not shown.
MAX_LINE_CHARS = 2000
#: Longest message or traceback that is logged in total.
MAX_RECORD_CHARS = 20_000
#: Cut this far past a limit before redacting, so a token the cut splits is still
#: whole when masked (a URL-encoded token is at most 87 characters).
_REDACTION_MARGIN = 100
#: What PyMongo appends to its errors' text: the server's whole answer, which quotes
#: each failed bulk operation (a user's FSM data, a journaled update).
_DATABASE_DETAILS = re.compile(r", full error: (?:\{.*\}|\[.*\])")
_ERROR_CODE = re.compile(r"'code': (-?\d+)")


class TokenRedactingFilter(logging.Filter):
    """Masks tokens and secrets in every record, including tracebacks, and caps its length.

    aiohttp and aiogram put request URLs (``/bot<token>/method``) into some
    error messages, and a database error can quote a whole document (a user's
    20 MB of FSM data, or PyMongo's ``full error`` details quoting each failed
    bulk operation, of which only the codes are kept); this filter is the last
    line that keeps both out of logs.
    Tokens the registry names are masked even when they do not look like real ones.
    """

    def __init__(self) -> None:
        super().__init__()
        self._redact = TokenRedactor()

    def remember(self, tokens: Iterable[str]) -> None:
        """Mask these tokens from now on (the registry's, after each load)."""
        self._redact.remember(tokens)

    def remember_secrets(self, secrets: Iterable[str]) -> None:
        """Mask these secrets from now on (webhook secrets, as they are read)."""
        self._redact.remember_secrets(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception as error:  # this runs inside the logging call: it must not raise
            # The arguments are left out: they may be users' data.
            message = f"{record.msg} [log arguments not formatted: {type(error).__name__}]"
        record.msg, record.args = self._capped(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        # Handlers that read the exception object itself (an error tracker's) would see
        # its unredacted text: they get the redacted traceback text only.
        record.exc_info = None
        if record.exc_text:
            record.exc_text = self._capped(record.exc_text)
        if record.stack_info:
            record.stack_info = self._capped(record.stack_info)
        return True

    def _capped(self, text: str) -> str:
        """``text`` redacted, each line at most :data:`MAX_LINE_CHARS`, all of it at most
        :data:`MAX_RECORD_CHARS` (plus the notes saying how much was left out)."""
        if ", full error: " in text:
            text = _DATABASE_DETAILS.sub(_error_codes, text)
        lines = text.split("\n")
        if len(text) <= MAX_RECORD_CHARS and all(len(line) <= MAX_LINE_CHARS for line in lines):
            return self._redact(text)
        capped = "\n".join(
            self._redact(line) if len(line) <= MAX_LINE_CHARS else self._cut(line) for line in lines
        )
        if len(capped) <= MAX_RECORD_CHARS:
            return capped
        return capped[:MAX_RECORD_CHARS] + f"... [{len(capped) - MAX_RECORD_CHARS} more not logged]"

    def _cut(self, line: str) -> str:
        """A long line's first :data:`MAX_LINE_CHARS`, redacted.

        The margin's end is dropped whatever the masking left: a token the
        margin cut off is not masked, and masking the tokens before it moves
        it forward, within the limit.
        """
        redacted = self._redact(line[: MAX_LINE_CHARS + _REDACTION_MARGIN])
        kept = redacted[: min(MAX_LINE_CHARS, len(redacted) - _REDACTION_MARGIN)]
        return kept + f"... [{len(line) - len(kept)} more characters not logged]"


def _error_codes(details: re.Match[str]) -> str:
    """A database error's details reduced to its codes."""
    codes = ", ".join(dict.fromkeys(_ERROR_CODE.findall(details.group())))
    return ", full error: not logged" + (f" (codes {codes})" if codes else "")


@dataclass(frozen=True, slots=True)
class LogContext:
    """What a log record is about, where known: the bot, the update and its chat."""

    bot: str | None = None
    update_id: int | None = None
    chat_id: int | None = None


#: Set by the runtime around a bot's work and each update it handles.
_NO_CONTEXT = LogContext()
log_context: ContextVar[LogContext] = ContextVar("botyard_log_context", default=_NO_CONTEXT)

_CONTEXT_FIELDS = ("bot", "update_id", "chat_id")
#: The record attribute holding its :class:`LogContext`: one name no caller's ``extra``
#: uses (logging refuses an ``extra`` key the record has already).
_CONTEXT_ATTRIBUTE = "botyard_log_context"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the context fields where
    known, and an exception or stack as one field each."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = getattr(record, _CONTEXT_ATTRIBUTE, _NO_CONTEXT)
        for field in _CONTEXT_FIELDS:
            value = getattr(context, field)
            if value is not None:
                entry[field] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, ensure_ascii=False)


class _RedactingRecordFactory:
    """Makes every log record through the current redactor, so every handler (a bot's
    own, ``logging.basicConfig`` in a bot module, an error tracker's) sees the
    redacted text, and adds the :data:`log_context` fields."""

    def __init__(self, make: Any) -> None:
        self.make = make
        self.redactor: TokenRedactingFilter | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record: logging.LogRecord = self.make(*args, **kwargs)
        setattr(record, _CONTEXT_ATTRIBUTE, log_context.get())
        if self.redactor is not None:
            self.redactor.filter(record)
        return record


def _record_factory() -> _RedactingRecordFactory:
    factory = logging.getLogRecordFactory()
    if not isinstance(factory, _RedactingRecordFactory):
        factory = _RedactingRecordFactory(factory)
        logging.setLogRecordFactory(factory)
    return factory


def configure_logging(
    level: str = "INFO", debug_loggers: Iterable[str] = (), log_format: LogFormat = "text"
) -> TokenRedactingFilter:
    """Log to stderr as text lines or JSON objects, every record redacted; the redactor is
    returned for updates (the registry's tokens, webhook secrets).

    Libraries stay at INFO or above (see :data:`CAPPED_LIBRARIES`) except those
    named in ``debug_loggers``, which log at ``level``.
    """
    redactor = TokenRedactingFilter()
    _record_factory().redactor = redactor
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter()
        if log_format == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    capped = max(root.level, logging.INFO)
    for name in CAPPED_LIBRARIES:
        logging.getLogger(name).setLevel(capped)
    # aiogram logs every handled update at INFO; one line per update drowns the bot events.
    logging.getLogger("aiogram.event").setLevel(max(capped, logging.WARNING))
    for name in debug_loggers:
        logging.getLogger(name).setLevel(root.level)
    return redactor
