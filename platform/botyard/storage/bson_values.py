"""Check FSM data against what BSON can store, before anything is written.

PyMongo rejects an unstorable value only when the write is sent, with an error
that does not say which FSM key held it. Checking first lets the storage name
the key and leave the stored record untouched.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from bson import Binary, Code, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_SCALARS = (
    str,
    bool,
    float,
    bytes,
    type(None),
    datetime.datetime,
    ObjectId,
    Decimal128,
    Int64,
    Binary,
    Regex,
    Code,
    Timestamp,
    MinKey,
    MaxKey,
)


class FSMDataError(ValueError):
    """FSM data holds a value MongoDB cannot store; the message names the key."""


def check_storable(data: Mapping[str, Any]) -> None:
    """Raise :class:`FSMDataError` naming the first key whose value BSON cannot store."""
    for key, value in data.items():
        if not isinstance(key, str):
            raise FSMDataError(
                f"FSM data key {key!r} is a {type(key).__name__}; MongoDB needs string keys"
            )
        if "\x00" in key:
            raise FSMDataError(f"FSM data key {key!r} contains a NUL character")
        _check(value, f"data[{key!r}]")


def _check(value: Any, path: str) -> None:
    if isinstance(value, int) and not isinstance(value, bool):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise FSMDataError(f"{path} is an integer outside 64 bits; store it as a string")
        return
    if isinstance(value, _SCALARS):
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise FSMDataError(
                    f"{path} has the key {key!r} of type {type(key).__name__}; "
                    "MongoDB needs string keys"
                )
            if "\x00" in key:
                raise FSMDataError(f"{path} has a key containing a NUL character")
            _check(item, f"{path}[{key!r}]")
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check(item, f"{path}[{index}]")
        return
    hint = {
        "set": "use a list",
        "frozenset": "use a list",
        "Decimal": "use a string or bson.Decimal128",
        "date": "use a datetime or an ISO string",
        "UUID": "use str(uuid)",
    }.get(type(value).__name__, "convert it to str, int, float, bool, list or dict")
    raise FSMDataError(f"{path} is a {type(value).__name__}, which MongoDB cannot store; {hint}")
