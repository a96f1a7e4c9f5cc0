"""Check FSM data against what BSON and MongoDB can store, before anything is written.

PyMongo rejects an unstorable value only when the write is sent, with an error
that does not say which FSM key held it; MongoDB refuses a document nested
deeper than 100 levels or larger than 16 MB only when it arrives, after the
handler may have answered the user. Checking first lets the storage name the
key and leave the stored record untouched.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

import bson
from bson import Binary, Code, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp

from botyard.errors import BotyardError

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


#: MongoDB refuses a stored document nested deeper than 100 levels (the test server
#: accepts more). The record is one level and its ``data`` another.
MAX_DATA_NESTING = 98
#: MongoDB's largest document (16 MiB), less room for the record's other fields.
MAX_DATA_BYTES = 16 * 1024 * 1024 - 16 * 1024


class FSMDataError(BotyardError, ValueError):
    """FSM data holds a value MongoDB cannot store; the message names the key."""


def check_storable(data: Mapping[str, Any]) -> None:
    """Raise :class:`FSMDataError` naming the first key whose value BSON cannot store.

    Values nested deeper than MongoDB allows, and values that contain themselves,
    are refused too.
    """
    for key, value in data.items():
        if not isinstance(key, str):
            raise FSMDataError(
                f"FSM data key {key!r} is a {type(key).__name__}; MongoDB needs string keys"
            )
        if "\x00" in key:
            raise FSMDataError(f"FSM data key {key!r} contains a NUL character")
        _check(value, f"data[{key!r}]", f"data[{key!r}]", ())


def check_size(data: Mapping[str, Any], where: str) -> None:
    """Raise :class:`FSMDataError` if ``data`` (already :func:`check_storable`) is too large
    for one MongoDB document; ``where`` names the bot and conversation, the message the
    largest key."""
    size = len(bson.encode({"data": data}))
    if size <= MAX_DATA_BYTES:
        return
    largest = max(data, key=lambda key: len(bson.encode({key: data[key]})))
    raise FSMDataError(
        f"FSM data of {where} would take {size:,} bytes; MongoDB stores at most "
        f"{MAX_DATA_BYTES:,} per conversation (largest key {largest!r}); nothing was written"
    )


def _check(value: Any, path: str, top: str, containers: tuple[int, ...]) -> None:
    """Check ``value`` at ``path`` (below the data key ``top``) inside ``containers``."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise FSMDataError(f"{path} is an integer outside 64 bits; store it as a string")
        return
    if isinstance(value, _SCALARS):
        return
    if isinstance(value, Mapping | list | tuple):
        if id(value) in containers:
            raise FSMDataError(f"{path} contains itself; MongoDB cannot store a cycle")
        if len(containers) >= MAX_DATA_NESTING:
            raise FSMDataError(
                f"{top} nests more than {MAX_DATA_NESTING} levels deep; "
                "MongoDB refuses documents nested past 100"
            )
        containers = (*containers, id(value))
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise FSMDataError(
                    f"{path} has the key {key!r} of type {type(key).__name__}; "
                    "MongoDB needs string keys"
                )
            if "\x00" in key:
                raise FSMDataError(f"{path} has a key containing a NUL character")
            _check(item, f"{path}[{key!r}]", top, containers)
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check(item, f"{path}[{index}]", top, containers)
        return
    hint = {
        "set": "use a list",
        "frozenset": "use a list",
        "Decimal": "use a string or bson.Decimal128",
        "date": "use a datetime or an ISO string",
        "UUID": "use str(uuid)",
    }.get(type(value).__name__, "convert it to str, int, float, bool, list or dict")
    raise FSMDataError(f"{path} is a {type(value).__name__}, which MongoDB cannot store; {hint}")
