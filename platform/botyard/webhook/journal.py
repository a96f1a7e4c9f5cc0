"""The journal of accepted updates: written before Telegram forgets them, deleted once handled.

Telegram delivers a webhook update again only when the request fails. Once
botyard has answered 200, the update exists nowhere but in botyard, so before
answering it is inserted into the ``webhook_updates`` collection (one round
trip), and handled from memory. When handling ends, its entry is deleted; the
deletes of all bots are batched (one ``delete_many`` per :data:`FLUSH_DELAY`,
so under load they cost a fraction of a round trip per update).

A polling bot uses the same journal for the updates that wait (a slow handler,
a chat under a flood wait, a conversation queued behind one): they are
inserted, all of one poll in one round trip (:meth:`UpdateJournal.park`),
before the bot confirms past them to Telegram, so one stuck chat never holds
back the others' updates (see :mod:`botyard.runtime.runner`).

Each process has an instance id (``host:pid:random``) and writes a heartbeat to
``botyard_instances`` every :data:`HEARTBEAT_INTERVAL`. Entries belong to the
instance that accepted them. When a bot starts, and at every heartbeat, the
entries of instances that are gone are claimed, one instance winning each
entry, and handled, in ``update_id`` order. An instance is gone when it shut
down, when it wrote no heartbeat for :data:`DEAD_AFTER`, or at once when it ran
on this host and its process no longer exists (or is this one: a restarted
container often gets the same pid). So an update
accepted and then lost to a crash, a SIGKILL, or a shutdown that timed out is
handled after the restart, or by another replica. Delivery is at-least-once:
an update handled but not yet deleted when the process died is handled again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError

from botyard.database.documents import Clock, Document, utcnow

__all__ = [
    "INSTANCES_COLLECTION",
    "JOURNAL_COLLECTION",
    "JournalEntry",
    "UpdateJournal",
]

logger = logging.getLogger("botyard.journal")

JOURNAL_COLLECTION = "webhook_updates"
INSTANCES_COLLECTION = "botyard_instances"
DUPLICATE_KEY = 11000
#: Finished updates are deleted in one batch after this many seconds.
FLUSH_DELAY = 0.2
HEARTBEAT_INTERVAL = 10.0
#: An instance without a heartbeat for this long is gone: its entries are claimed.
DEAD_AFTER = timedelta(seconds=30)
#: Heartbeats of instances that died (no clean shutdown) are deleted after this long.
FORGET_AFTER = timedelta(days=1)


@dataclass(frozen=True)
class JournalEntry:
    """One accepted update waiting to be handled (again)."""

    bot: str
    update_id: int
    update: Document


class UpdateJournal:
    """Accepted webhook updates of one process, in MongoDB until handled."""

    def __init__(self, database: AsyncDatabase[Document], *, clock: Clock = utcnow) -> None:
        #: Dates acceptances and heartbeats, and tells which instances are dead.
        self.clock = clock
        self.instance = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.entries = database[JOURNAL_COLLECTION]
        self.instances = database[INSTANCES_COLLECTION]
        self._finished: list[str] = []
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None

    async def prepare(self) -> None:
        """Create the index claims query by, forget long-dead instances, write a heartbeat."""
        await self.entries.create_indexes(
            [IndexModel([("bot", ASCENDING), ("owner", ASCENDING)], name="bot_owner")]
        )
        await self.instances.delete_many({"seen_at": {"$lt": self.clock() - FORGET_AFTER}})
        await self.heartbeat()
        self._flusher = asyncio.create_task(self._flush_loop(), name="botyard-journal-flush")

    async def close(self) -> None:
        """Delete what finished, and drop the heartbeat so what is left is claimed at once."""
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
            self._flusher = None
        with contextlib.suppress(PyMongoError):
            await self.flush()
            await self.instances.delete_one({"_id": self.instance})

    # accepting and finishing

    async def record(self, bot: str, update_id: int, update: Document) -> bool:
        """Persist an accepted update; ``False`` if it is journaled already (a redelivery)."""
        try:
            await self.entries.insert_one(self._entry(bot, update_id, update))
        except DuplicateKeyError:
            return False
        return True

    async def park(self, bot: str, updates: Iterable[tuple[int, Document]]) -> None:
        """Persist updates a polling bot is about to confirm unhandled: one round trip.

        An update journaled already (a restart between this insert and the
        confirmation) is left as it is.
        """
        now = self.clock()
        entries = [self._entry(bot, update_id, update, now) for update_id, update in updates]
        if not entries:
            return
        try:
            await self.entries.insert_many(entries, ordered=False)
        except BulkWriteError as error:
            if any(problem.get("code") != DUPLICATE_KEY for problem in _write_errors(error)):
                raise
            if error.details.get("writeConcernErrors"):
                raise

    def _entry(
        self, bot: str, update_id: int, update: Document, now: datetime | None = None
    ) -> Document:
        return {
            "_id": _entry_id(bot, update_id),
            "bot": bot,
            "update_id": update_id,
            "update": update,
            "owner": self.instance,
            "accepted_at": now or self.clock(),
        }

    def finished(self, bot: str, update_id: int) -> None:
        """Mark an update handled; its entry goes with the next batch."""
        self._finished.append(_entry_id(bot, update_id))
        self._wake.set()

    async def flush(self) -> None:
        """Delete the entries of every update finished so far, in one round trip."""
        batch, self._finished = self._finished, []
        if not batch:
            return
        try:
            await self.entries.delete_many({"_id": {"$in": batch}})
        except BaseException:
            self._finished[:0] = batch  # kept for the next try
            raise

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(FLUSH_DELAY)
            self._wake.clear()
            try:
                await self.flush()
            except PyMongoError as error:
                logger.warning("journal: could not delete handled updates yet: %s", error)
                self._wake.set()

    # instances and recovery

    async def heartbeat(self) -> None:
        """Tell other processes this one is alive."""
        await self.instances.update_one(
            {"_id": self.instance}, {"$set": {"seen_at": self.clock()}}, upsert=True
        )

    async def claim(self, bots: Iterable[str], *, own: bool = False) -> list[JournalEntry]:
        """Take over the unhandled entries of ``bots`` whose instance is gone.

        With ``own``, this instance's entries are taken too: a bot starting
        again in this process (after a reload, or a shutdown that timed out)
        owns what its previous runner left. Entries come in ``update_id`` order.
        """
        names = list(bots)
        if not names:
            return []
        await self.flush()  # an entry handled but not deleted yet is not claimed again
        alive_since = self.clock() - DEAD_AFTER
        alive = [
            doc["_id"]
            async for doc in self.instances.find({"seen_at": {"$gte": alive_since}}, {"_id": 1})
        ]
        foreign = [
            instance
            for instance in alive
            if instance != self.instance and not self._known_dead(instance)
        ]
        if not own:
            foreign.append(self.instance)
        claim = uuid.uuid4().hex
        result = await self.entries.update_many(
            {"bot": {"$in": names}, "owner": {"$nin": foreign}},
            {"$set": {"owner": self.instance, "claim": claim}},
        )
        if result.modified_count == 0:
            return []
        cursor = self.entries.find(
            {"bot": {"$in": names}, "owner": self.instance, "claim": claim}
        ).sort("update_id", ASCENDING)
        return [JournalEntry(doc["bot"], doc["update_id"], doc["update"]) async for doc in cursor]

    def _known_dead(self, instance: str) -> bool:
        """An instance of this host whose process is gone, whatever its heartbeat says."""
        host, _, rest = instance.partition(":")
        pid = rest.partition(":")[0]
        if host != socket.gethostname() or not pid.isdigit():
            return False
        if int(pid) == os.getpid():
            return True  # an earlier run that had the same pid: not this one, which is self
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


def _entry_id(bot: str, update_id: int) -> str:
    return f"{bot}:{update_id}"


def _write_errors(error: BulkWriteError) -> list[Document]:
    errors: list[Document] = error.details.get("writeErrors", [])
    return errors
