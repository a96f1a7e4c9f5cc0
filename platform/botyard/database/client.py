"""The one way botyard builds a MongoDB client, and the timeouts every client gets.

Without an operation timeout, a query on a half-open connection can wait for
ever; every client therefore gets ``timeoutMS`` (the registry's
``storage.timeout``). Finding a server and opening a connection are about
reachability, not about how long an operation may run: they give up sooner, so
an unreachable database fails a write within seconds and the update is retried.

An option written in the connection string (``?timeoutMS=...``) takes
precedence over these defaults, and keyword options passed here over both.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl

from pymongo import AsyncMongoClient

from botyard.database.documents import Document
from botyard.registry.models import DEFAULT_STORAGE_TIMEOUT

__all__ = ["REACH_TIMEOUT", "mongo_client"]

#: Longest wait for a usable server, and for a new connection (if the timeout is longer).
REACH_TIMEOUT = timedelta(seconds=5)


def mongo_client(
    uri: str, *, timeout: timedelta = DEFAULT_STORAGE_TIMEOUT, **options: Any
) -> AsyncMongoClient[Document]:
    """A client with timezone-aware dates and botyard's timeouts.

    ``timeout`` bounds every operation; ``options`` are passed to
    :class:`~pymongo.AsyncMongoClient` (``appname``, ``event_listeners``, ...).
    """
    reach = _milliseconds(min(timeout, REACH_TIMEOUT))
    defaults = {
        "timeoutMS": _milliseconds(timeout),
        "serverSelectionTimeoutMS": reach,
        "connectTimeoutMS": reach,
    }
    in_uri = _uri_option_names(uri)
    chosen = {name: value for name, value in defaults.items() if name.lower() not in in_uri}
    return AsyncMongoClient(uri, **{"tz_aware": True, **chosen, **options})


def _milliseconds(duration: timedelta) -> int:
    return max(1, int(duration.total_seconds() * 1000))


def _uri_option_names(uri: str) -> set[str]:
    """The options a connection string sets, in lower case (option names ignore case)."""
    _, _, query = uri.partition("?")
    return {name.lower() for name, _ in parse_qsl(query.replace(";", "&"), keep_blank_values=True)}
