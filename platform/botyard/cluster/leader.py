"""The leader lease: one replica runs what must run once (the cleanup sweep, the samplers).

One document, ``{_id: "leader", holder, renewed_at}`` in ``botyard_leader``.
The leader renews it at every heartbeat with the server's time that heartbeat
returned; another replica takes it only once ``renewed_at`` is older than the
lapse, compared with its own heartbeat's server time. The others only read it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from botyard.cluster.membership import MAJORITY
from botyard.database.documents import Document

__all__ = ["LEADER_COLLECTION", "LeaderLease"]

LEADER_COLLECTION = "botyard_leader"
LEADER_ID = "leader"


class LeaderLease:
    """Acquire, renew and resign the leader role for one replica."""

    def __init__(self, database: AsyncDatabase[Document], replica_id: str) -> None:
        self.replica_id = replica_id
        self.collection = database.get_collection(LEADER_COLLECTION, write_concern=MAJORITY)

    async def hold(self, now: datetime, lapse: float, *, leading: bool) -> bool:
        """Renew the lease, or take it if it is free or lapsed; whether this replica leads.

        A replica that does not lead reads the lease first and writes only when
        it may take it, so only the leader writes every heartbeat.
        """
        since = now - timedelta(seconds=lapse)
        if not leading:
            doc = await self.collection.find_one({"_id": LEADER_ID})
            if (
                doc is not None
                and doc.get("holder") not in (None, self.replica_id)
                and doc["renewed_at"] >= since
            ):
                return False
        try:
            result = await self.collection.update_one(
                {
                    "_id": LEADER_ID,
                    "$or": [
                        {"holder": self.replica_id},
                        {"holder": None},
                        {"renewed_at": {"$lt": since}},
                    ],
                },
                {"$set": {"holder": self.replica_id, "renewed_at": now}},
                upsert=True,
            )
        except DuplicateKeyError:  # the document exists and another replica holds it
            return False
        return result.matched_count == 1 or result.upserted_id is not None

    async def holder(self) -> str | None:
        doc = await self.collection.find_one({"_id": LEADER_ID})
        return None if doc is None else doc.get("holder")

    async def resign(self) -> None:
        await self.collection.update_one(
            {"_id": LEADER_ID, "holder": self.replica_id}, {"$set": {"holder": None}}
        )
