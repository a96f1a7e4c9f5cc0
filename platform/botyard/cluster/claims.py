"""Bot claims: which replica may poll a bot, changed by compare-and-set only.

One document per bot in ``botyard_bot_claims``: ``{_id: bot, holder, epoch}``.
A replica writes a claim only when a bot moves (never to renew it: the
holder's heartbeat says it is alive), so the cost per heartbeat does not
depend on the number of bots.

A replica takes a bot only from a claim it read with no holder, with itself
as holder, or with a holder that was not alive when read *after* the claim;
the update matches the ``epoch`` it read, so of two replicas racing for one
bot one wins, and a holder that came back and re-took its claim (bumping the
epoch) cannot be overtaken by a replica that saw it dead a moment before.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime

from pymongo import InsertOne, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from botyard.cluster.membership import MAJORITY
from botyard.database.documents import Document

__all__ = ["CLAIMS_COLLECTION", "Claim", "Claims"]

CLAIMS_COLLECTION = "botyard_bot_claims"
#: Bots per ``$in`` when reading or releasing claims. MongoDB takes any length;
#: SecantusDB checks each match against the whole list again, so n bots in one
#: query cost it n^2 (10,000 bots: minutes; in batches of 100: about a second).
IN_BATCH = 100


@dataclass(frozen=True)
class Claim:
    """A bot's claim as read: who holds it (``None``: released) and its version."""

    holder: str | None
    epoch: int


class Claims:
    """The claims collection, as one replica uses it."""

    def __init__(self, database: AsyncDatabase[Document], replica_id: str) -> None:
        self.replica_id = replica_id
        self.collection = database.get_collection(CLAIMS_COLLECTION, write_concern=MAJORITY)

    async def read(self, bots: Collection[str]) -> dict[str, Claim]:
        """The claims of ``bots`` that exist (a bot never claimed has none)."""
        claims: dict[str, Claim] = {}
        for batch in _batches(bots):
            async for doc in self.collection.find({"_id": {"$in": batch}}):
                claims[doc["_id"]] = Claim(doc.get("holder"), int(doc.get("epoch", 0)))
        return claims

    async def take(self, bots: Mapping[str, Claim | None], now: datetime) -> set[str]:
        """Take each bot from the claim read for it; return the bots this replica now holds."""
        if not bots:
            return set()
        operations: list[InsertOne[Document] | UpdateOne] = []
        for bot, claim in bots.items():
            if claim is None:
                operations.append(
                    InsertOne({"_id": bot, "holder": self.replica_id, "epoch": 1, "at": now})
                )
            else:
                operations.append(
                    UpdateOne(
                        {"_id": bot, "holder": claim.holder, "epoch": claim.epoch},
                        {"$set": {"holder": self.replica_id, "at": now}, "$inc": {"epoch": 1}},
                    )
                )
        try:
            result = await self.collection.bulk_write(operations, ordered=False)
        except BulkWriteError as error:
            # Lost races (duplicate keys) are expected; anything else is not.
            if any(failure.get("code") != 11000 for failure in error.details["writeErrors"]):
                raise
        else:
            if result.inserted_count + result.matched_count == len(operations):
                return set(bots)  # no race lost: every claim is this replica's
        return await self.held(bots)

    async def held(self, bots: Collection[str]) -> set[str]:
        """Which of ``bots`` this replica holds (one query for all it holds)."""
        cursor = self.collection.find({"holder": self.replica_id}, {"_id": 1})
        return {doc["_id"] async for doc in cursor} & set(bots)

    async def release(self, bots: Collection[str]) -> None:
        """Give up ``bots`` (stopped here) so that their next holder can start them."""
        for batch in _batches(bots):
            await self.collection.update_many(
                {"_id": {"$in": batch}, "holder": self.replica_id},
                {"$set": {"holder": None}, "$inc": {"epoch": 1}},
            )


def _batches(bots: Collection[str]) -> list[list[str]]:
    names = sorted(bots)
    return [names[start : start + IN_BATCH] for start in range(0, len(names), IN_BATCH)]
