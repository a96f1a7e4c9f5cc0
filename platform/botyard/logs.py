"""Logging for the platform: one line per event, and never a bot token."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from botyard.tokens import TokenRedactor


class TokenRedactingFilter(logging.Filter):
    """Masks tokens in every record, including exception tracebacks.

    aiohttp and aiogram put request URLs (``/bot<token>/method``) into some
    error messages; this filter is the last line that keeps them out of logs.
    Tokens the registry names are masked even when they do not look like real ones.
    """

    def __init__(self) -> None:
        super().__init__()
        self._redact = TokenRedactor()

    def remember(self, tokens: Iterable[str]) -> None:
        """Mask these tokens from now on (the registry's, after each load)."""
        self._redact.remember(tokens)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = self._redact(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._redact(record.exc_text)
        return True


def configure_logging(level: str = "INFO") -> TokenRedactingFilter:
    """Log to stderr through a token-redacting filter, which is returned for updates."""
    redactor = TokenRedactingFilter()
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(redactor)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiogram logs every handled update at INFO; one line per update drowns the bot events.
    logging.getLogger("aiogram.event").setLevel(logging.WARNING)
    return redactor
