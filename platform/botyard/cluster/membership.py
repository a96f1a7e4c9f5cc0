"""Membership: one document per replica in ``botyard_replicas``, renewed every heartbeat.

The heartbeat is the only write a replica makes per interval, whatever the
number of bots: ``heartbeat_at`` is set to the server's ``$$NOW`` by a pipeline
update that returns it, so every lapse decision compares the server's clock
with itself (SecantusDB compares ``$$NOW`` wrongly inside queries, so the time
is read back and compared as a literal). The list of bots a replica serves is
written only when it changed, for ``botyard status``; the bot claims in
:mod:`botyard.cluster.claims` are what keeps two replicas off one bot.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime

from pymongo import ReturnDocument, WriteConcern
from pymongo.asynchronous.database import AsyncDatabase

from botyard.database.documents import Document

__all__ = ["REPLICAS_COLLECTION", "Member", "Membership", "new_replica_id", "server_time"]

REPLICAS_COLLECTION = "botyard_replicas"
MAJORITY = WriteConcern("majority")


def new_replica_id() -> str:
    """``host:pid:random``: unique even when a restarted container gets the same pid."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


async def server_time(database: AsyncDatabase[Document]) -> datetime:
    """MongoDB's clock, from ``hello`` (no write needed)."""
    reply = await database.command("hello")
    local: datetime = reply["localTime"]
    # Command replies are decoded without the client's tz_aware: the time is UTC.
    return local if local.tzinfo is not None else local.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Member:
    """One replica as its last heartbeat described it."""

    id: str
    heartbeat_at: datetime
    started_at: datetime
    bots: tuple[str, ...]
    leaving: bool

    def silent_for(self, now: datetime) -> float:
        """Seconds since its last heartbeat, on the server's clock."""
        return (now - self.heartbeat_at).total_seconds()

    @classmethod
    def from_document(cls, doc: Document) -> Member:
        return cls(
            id=doc["_id"],
            heartbeat_at=doc["heartbeat_at"],
            started_at=doc.get("started_at") or doc["heartbeat_at"],
            bots=tuple(doc.get("bots", ())),
            leaving=bool(doc.get("leaving", False)),
        )


class Membership:
    """This replica's document, and reading everyone's."""

    def __init__(self, database: AsyncDatabase[Document], replica_id: str) -> None:
        self.replica_id = replica_id
        self.collection = database.get_collection(REPLICAS_COLLECTION, write_concern=MAJORITY)
        self._written_bots: tuple[str, ...] | None = None

    async def heartbeat(self, bots: Collection[str], *, leaving: bool = False) -> datetime:
        """Renew this replica's document; return the server's time it was stamped with."""
        listed = tuple(sorted(bots))
        changes: Document = {"heartbeat_at": "$$NOW", "leaving": leaving}
        if self._written_bots is None:
            changes["started_at"] = "$$NOW"
        if listed != self._written_bots:
            changes["bots"] = {"$literal": list(listed)}
        doc = await self.collection.find_one_and_update(
            {"_id": self.replica_id},
            [{"$set": changes}],
            projection={"heartbeat_at": 1},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        self._written_bots = listed
        assert doc is not None  # upsert with AFTER always returns the document
        stamped: datetime = doc["heartbeat_at"]
        return stamped

    async def members(self) -> list[Member]:
        """Every replica document, live or not, in id order."""
        cursor = self.collection.find({}).sort("_id", 1)
        return [Member.from_document(doc) async for doc in cursor]

    async def leave(self) -> None:
        """Remove this replica's document (after it released its bots)."""
        await self.collection.delete_one({"_id": self.replica_id})

    async def forget(self, silent_since: datetime) -> int:
        """Delete documents of replicas silent since before ``silent_since`` (died long ago)."""
        result = await self.collection.delete_many({"heartbeat_at": {"$lt": silent_since}})
        return result.deleted_count
