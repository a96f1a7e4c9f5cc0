"""The database server's clock, for decisions several hosts must agree on.

Heartbeats and leases (the webhook journal's instances, the migration lock)
compare times written by different hosts; each host's own clock may be off by
seconds or more, and a host whose clock runs behind would look dead to the
others, or hold a lock past its expiry. Reading the time from the one server
they share makes every host judge by the same clock.

``$$NOW`` inside a query would do this on MongoDB, but SecantusDB, the test and
embedded server, compares it wrongly; so the time is read first (``hello``'s
``localTime``, one cheap round trip) and the queries compare with that literal.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pymongo.asynchronous.database import AsyncDatabase

from botyard.database.documents import Document

__all__ = ["server_now"]


async def server_now(database: AsyncDatabase[Document]) -> datetime:
    """The server's current time, timezone-aware UTC, at BSON's millisecond precision."""
    reply = await database.command("hello")
    local: datetime = reply["localTime"]
    return local if local.tzinfo is not None else local.replace(tzinfo=UTC)
