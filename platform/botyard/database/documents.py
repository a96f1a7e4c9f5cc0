"""What botyard's MongoDB code shares: the document type and the clock that dates documents."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

Document = dict[str, Any]
"""A MongoDB document as PyMongo reads and writes it."""

Clock = Callable[[], datetime]
"""What tells the time: :func:`utcnow` in production, a fake in tests."""


def utcnow() -> datetime:
    """Now in UTC, at the millisecond precision BSON dates keep."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)
