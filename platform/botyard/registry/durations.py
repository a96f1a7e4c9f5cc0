"""Human durations for the registry: ``30s``, ``15m``, ``12h``, ``7d``, ``2w``, ``1h30m``, never.

Durations are written by people in a YAML file, so the parser is strict: a bare
number is rejected because nobody can tell whether ``600`` means seconds or
minutes, and zero or negative values are rejected because a state that expires
immediately is always a mistake (``never`` is the explicit way to disable expiry).
"""

from __future__ import annotations

import functools
import re
from datetime import timedelta

__all__ = ["ACCEPTED_FORMS", "NEVER", "format_duration", "parse_duration"]

NEVER = "never"
"""The spelling that disables expiry; parsed to ``None``."""

ACCEPTED_FORMS = "use 30s, 15m, 12h, 7d or never"
"""Shown at the end of every duration error, so the fix is in the message."""
_POSITIVE_FORMS = "use 30s, 15m, 12h or 7d"

_UNIT_SECONDS = {"w": 604_800, "d": 86_400, "h": 3_600, "m": 60, "s": 1}
_FORMAT_UNITS = {unit: size for unit, size in _UNIT_SECONDS.items() if unit != "w"}
_PART = re.compile(r"(\d+)([wdhms])")
_WHOLE = re.compile(r"(?:\d+[wdhms])+")
_NUMBER = re.compile(r"[+-]?\d+(?:\.\d*)?")


def parse_duration(value: object, *, allow_never: bool = True) -> timedelta | None:
    """Parse a duration; ``None`` means never.

    Accepts a ``timedelta`` (from Python callers) or a string of one or more
    ``<number><unit>`` parts, units in decreasing order (``1d12h``, not ``12h1d``).
    Raises ``ValueError`` with a message that names the accepted forms.
    """
    forms = ACCEPTED_FORMS if allow_never else _POSITIVE_FORMS
    if isinstance(value, timedelta):
        if value <= timedelta(0):
            raise ValueError(f"duration must be positive, got {value} ({forms})")
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration, got {_kind(value)} ({forms})")
    return _parse_text(value, allow_never)


@functools.lru_cache(maxsize=256)
def _parse_text(value: str, allow_never: bool) -> timedelta | None:
    """One duration string; cached, since a registry of 10,000 bots repeats the same few
    (errors are raised each time, never cached)."""
    forms = ACCEPTED_FORMS if allow_never else _POSITIVE_FORMS
    text = value.strip().lower()
    if _NUMBER.fullmatch(text):
        raise ValueError(f"bare number {text} has no unit ({forms}; e.g. {text}s or {text}m)")
    if text == NEVER:
        if not allow_never:
            raise ValueError(f"'never' is not allowed here ({forms})")
        return None
    if not _WHOLE.fullmatch(text):
        raise ValueError(f"invalid duration {value!r} ({forms})")
    parts = _PART.findall(text)
    units = [unit for _, unit in parts]
    order = list(_UNIT_SECONDS)
    if len(set(units)) != len(units) or units != sorted(units, key=order.index):
        raise ValueError(
            f"invalid duration {value!r}: write each unit once, largest first (e.g. 1h30m)"
        )
    seconds = sum(int(number) * _UNIT_SECONDS[unit] for number, unit in parts)
    if seconds == 0:
        disable = "; to disable expiry write never" if allow_never else ""
        raise ValueError(f"duration {value!r} is zero{disable} ({forms})")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta | None) -> str:
    """Inverse of :func:`parse_duration`: the shortest string that parses back to ``value``.

    Used when the registry is dumped (JSON, diffs, logs), so what people read
    looks like what they wrote: days rather than weeks, as in the common ``7d``.
    Sub-second parts are dropped: the file cannot express them.
    """
    if value is None:
        return NEVER
    remaining = int(value.total_seconds())
    parts: list[str] = []
    for unit, size in _FORMAT_UNITS.items():
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def _kind(value: object) -> str:
    return "an empty value" if value is None else f"a {type(value).__name__}"
