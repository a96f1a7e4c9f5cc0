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
``botyard_instances`` every :data:`HEARTBEAT_INTERVAL` while it has a reason to
(see :meth:`UpdateJournal.needs_upkeep`): it serves webhook bots, holds entries,
or the journal has entries at all. A process whose bots only poll and that
journaled nothing writes none after its start and reads one document per
interval to learn whether that changed; before it journals an update, a heartbeat
older than :data:`RENEW_AFTER` is renewed, so nothing it is about to hold looks
orphaned. Entries belong to the instance that accepted them. When bots start
(all those starting together in one claim), and at every heartbeat, the entries
of instances that are gone are claimed, one instance winning each entry, and
handled, in ``update_id`` order. An instance is gone when it shut
down, when it wrote no heartbeat for :data:`DEAD_AFTER`, or at once when it ran
on this host and its process no longer exists (or is this one: a restarted
container often gets the same pid). Heartbeats are dated, and judged, by the
database server's clock (:func:`~botyard.database.server_time.server_now`), so a
host whose clock is off neither looks dead nor outlives its death. So an update
accepted and then lost to a crash, a SIGKILL, or a shutdown that timed out is
handled after the restart, or by another replica. Delivery is at-least-once:
an update handled but not yet deleted when the process died is handled again.

The journal also knows which of its entries this process holds in memory ("in
flight": accepted or claimed, and not yet finished), and hands out any of its
own entries that nothing holds: one whose insert committed while its
acknowledgement was lost (answered 503; Telegram's redelivery then meets the
entry and takes it), and one a claim moved to this instance before the claim
was interrupted. Each heartbeat's claim picks these up too.

With replicas (a ``cluster`` section) the journal is *shared*: entries have
no owner (``owner: null``) and belong to whichever replica holds the bot's
claim (see :mod:`botyard.cluster`). Any replica accepts any bot's webhook
update and journals it; the holder hands out the ownerless entries of its bots
in ``update_id`` order (:meth:`UpdateJournal.pending`, one query per
:data:`PICKUP_INTERVAL`, or at once when it accepted one itself), so one
chat's updates are handled in order wherever they arrived. A bot's claim moves
only once its holder finished or let go of its updates, so what a holder left
unhandled (parked polled updates too) is handed to the next holder as soon as
it starts, whether the previous one stopped, died or is still alive.

The ``bot_owner`` index the claims query by is built by a migration
(``migrations/20261125130000_webhook_journal_index.py``), not at run time: the
application's MongoDB user need not be allowed to build indexes.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError

from botyard.database.documents import Clock, Document, utcnow
from botyard.database.server_time import server_now

__all__ = [
    "INSTANCES_COLLECTION",
    "JOURNAL_COLLECTION",
    "JournalEntry",
    "Recorded",
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
#: Before journaling under this instance, a heartbeat older than this is renewed first.
RENEW_AFTER = DEAD_AFTER.total_seconds() / 2
#: Heartbeats of instances that died (no clean shutdown) are deleted after this long.
FORGET_AFTER = timedelta(days=1)
#: With replicas, how often a holder looks for its bots' updates that others journaled.
PICKUP_INTERVAL = 0.25


class Recorded(enum.Enum):
    """What :meth:`UpdateJournal.record` made of a delivered update."""

    #: New: journaled now; hand it to the bot.
    ACCEPTED = "accepted"
    #: Journaled already by this instance, and nothing here holds it (its insert's
    #: acknowledgement was lost): taken now; hand it to the bot.
    TAKEN = "taken"
    #: Held already, here or by another live instance: nothing to do.
    DUPLICATE = "duplicate"


@dataclass(frozen=True)
class JournalEntry:
    """One accepted update waiting to be handled (again)."""

    bot: str
    update_id: int
    update: Document


class UpdateJournal:
    """Accepted webhook updates of one process, in MongoDB until handled.

    ``shared``: one of several replicas; entries are left to the bot's holder.
    """

    def __init__(
        self, database: AsyncDatabase[Document], *, clock: Clock = utcnow, shared: bool = False
    ) -> None:
        #: Dates acceptances. Heartbeats and who is dead go by the server's clock.
        self.clock = clock
        self.shared = shared
        self.instance = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.entries = database[JOURNAL_COLLECTION]
        self.instances = database[INSTANCES_COLLECTION]
        self._finished: list[tuple[str, int]] = []
        #: update ids per bot that this process holds: accepted or claimed, and not
        #: yet deleted (a finished update is held until its entry is gone).
        self._in_flight: dict[str, set[int]] = {}
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        #: Bots starting, each waiting for its share of the next batched claim.
        self._starting: dict[str, tuple[bool, asyncio.Future[list[JournalEntry]]]] = {}
        self._start_claims: asyncio.Task[None] | None = None
        #: When this instance's heartbeat was last written (``time.monotonic``).
        self._beat_at = -math.inf
        #: Held by a deletion until its updates are let go, and by a hand-out from its
        #: query until what it found is held: a hand-out never reads an entry a deletion
        #: is about to let go of (it would be handed out again).
        self._handing = asyncio.Lock()

    async def prepare(self) -> None:
        """Forget long-dead instances, write a heartbeat."""
        forget_before = await server_now(self.entries.database) - FORGET_AFTER
        await self.instances.delete_many({"seen_at": {"$lt": forget_before}})
        await self.heartbeat()
        self._flusher = asyncio.create_task(self._flush_loop(), name="botyard-journal-flush")

    async def close(self) -> None:
        """Delete what finished, and drop the heartbeat so what is left is claimed at once."""
        for task in (self._flusher, self._start_claims):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._flusher = self._start_claims = None
        for _, future in self._starting.values():
            future.cancel()
        self._starting.clear()
        try:
            await self.flush()
        except PyMongoError as error:
            logger.warning(
                "journal: %d handled update(s) not deleted at shutdown (%s); "
                "they will be handled again",
                len(self._finished),
                type(error).__name__,
            )
        with contextlib.suppress(PyMongoError):  # else the others claim after DEAD_AFTER
            await self.instances.delete_one({"_id": self.instance})

    # accepting and finishing

    async def record(self, bot: str, update_id: int, update: Document) -> Recorded:
        """Persist a delivered update, or take its entry if it is ours and nothing holds it.

        The update counts as held from before the insert: a heartbeat's claim
        running meanwhile must not hand it out a second time. On an error it
        is let go, and an insert that committed all the same is picked up by
        the next claim, or by Telegram's redelivery.

        Shared, the entry is the holder's to hand out (:meth:`pending`), here
        or on another replica; it is not held.
        """
        if self.shared:
            try:
                await self.entries.insert_one(self._entry(bot, update_id, update))
            except DuplicateKeyError:  # journaled already: its holder has it
                return Recorded.DUPLICATE
            return Recorded.ACCEPTED
        held = self._in_flight.setdefault(bot, set())
        if update_id in held:
            return Recorded.DUPLICATE
        held.add(update_id)
        try:
            await self._renew_heartbeat()
            await self.entries.insert_one(self._entry(bot, update_id, update))
        except DuplicateKeyError:
            try:
                ours = await self._owns(bot, update_id)
            except BaseException:
                held.discard(update_id)
                raise
            if ours:
                return Recorded.TAKEN
            held.discard(update_id)  # another instance holds it, or it was handled meanwhile
            return Recorded.DUPLICATE
        except BaseException:
            held.discard(update_id)
            raise
        return Recorded.ACCEPTED

    async def _owns(self, bot: str, update_id: int) -> bool:
        document = await self.entries.find_one({"_id": _entry_id(bot, update_id)}, {"owner": 1})
        return document is not None and document.get("owner") == self.instance

    def release(self, bot: str, update_id: int | None = None) -> None:
        """Stop holding an update (``None``: every update of ``bot``) this process will not
        finish: the next claim hands it out again."""
        if update_id is None:
            self._in_flight.pop(bot, None)
        else:
            self._in_flight.get(bot, set()).discard(update_id)

    async def hand_back(self, bot: str) -> None:
        """Let any instance claim the entries of ``bot`` this one has and will not finish
        (its runner stopped before they were handled, and the process lives on).

        What finished is deleted first, so it is not handed out again. Shared,
        entries have no owner: letting them go here is all it takes.
        """
        await self.flush()
        self.release(bot)
        if not self.shared:
            await self.entries.update_many(
                {"bot": bot, "owner": self.instance}, {"$set": {"owner": None}}
            )

    async def park(self, bot: str, updates: Iterable[tuple[int, Document]]) -> None:
        """Persist updates a polling bot is about to confirm unhandled: one round trip.

        An update journaled already (a restart between this insert and the
        confirmation) is left as it is. On an error the updates stay held all
        the same: the insert may have committed (its answer lost), and the bot
        still handles them, so no claim may hand them out; the bot calls
        :meth:`finished` for each once handled.
        """
        now = self.clock()
        entries = [self._entry(bot, update_id, update, now) for update_id, update in updates]
        if not entries:
            return
        # Still handled here: no claim hands them out meanwhile.
        self._in_flight.setdefault(bot, set()).update(entry["update_id"] for entry in entries)
        try:
            await self._renew_heartbeat()
            await self.entries.insert_many(entries, ordered=False)
        except BulkWriteError as error:
            if any(problem.get("code") != DUPLICATE_KEY for problem in _write_errors(error)) or (
                error.details.get("writeConcernErrors")
            ):
                raise

    def _entry(
        self, bot: str, update_id: int, update: Document, now: datetime | None = None
    ) -> Document:
        return {
            "_id": _entry_id(bot, update_id),
            "bot": bot,
            "update_id": update_id,
            "update": update,
            "owner": None if self.shared else self.instance,
            "accepted_at": now or self.clock(),
        }

    def finished(self, bot: str, update_id: int) -> None:
        """Mark an update handled; its entry goes with the next batch."""
        self._finished.append((bot, update_id))
        self._wake.set()

    async def flush(self) -> None:
        """Delete the entries of every update finished so far, in one round trip."""
        async with self._handing:
            batch, self._finished = self._finished, []
            if not batch:
                return
            try:
                await self.entries.delete_many(
                    {"_id": {"$in": [_entry_id(*done) for done in batch]}}
                )
            except BaseException:
                self._finished[:0] = batch  # kept for the next try
                raise
            for bot, update_id in batch:
                self.release(bot, update_id)

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
            except Exception:  # not the database's trouble: said, and tried again later
                logger.exception("journal: could not delete handled updates yet")
                self._wake.set()
                await asyncio.sleep(HEARTBEAT_INTERVAL)

    # instances and recovery

    async def heartbeat(self) -> None:
        """Tell other processes this one is alive, dated by the server's clock."""
        sent_at = time.monotonic()
        await self.instances.update_one(
            {"_id": self.instance}, [{"$set": {"seen_at": "$$NOW"}}], upsert=True
        )
        self._beat_at = sent_at

    async def _renew_heartbeat(self) -> None:
        """Before this instance takes entries: a heartbeat, unless a recent one stands.

        Without webhook bots and with nothing journaled no heartbeat is written
        (see :meth:`needs_upkeep`), and others must not judge entries this
        instance is about to hold by a heartbeat that old.
        """
        if time.monotonic() - self._beat_at > RENEW_AFTER:
            await self.heartbeat()

    @property
    def holding(self) -> bool:
        """This process holds entries, or has handled ones still to delete."""
        return bool(self._finished) or any(self._in_flight.values())

    async def needs_upkeep(self) -> bool:
        """Whether this heartbeat's round (heartbeat, claim) has anything to serve.

        It does while this process holds entries (others must see it alive) and
        while the journal has any entry at all: one of a process that is gone,
        or one of this process's own that nothing holds, is there to be taken
        over. Otherwise, one read that finds the journal empty is the whole cost.
        """
        if self.holding:
            return True
        return await self.entries.find_one({}, {"_id": 1}) is not None

    async def claim(self, bots: Iterable[str], *, own: bool = False) -> list[JournalEntry]:
        """Take the unhandled entries of ``bots`` that nothing holds, in ``update_id`` order.

        Those of instances that are gone become this instance's. This
        instance's own entries that it does not hold (left by a claim
        interrupted half-way, or by an insert whose acknowledgement was lost)
        are handed out too. With ``own`` (a bot starting again in this process)
        what its previous runner held is let go and handed out as well. What is
        returned is held until :meth:`finished` or :meth:`release`.
        """
        names = list(bots)
        if not names:
            return []
        if own:
            for name in names:
                self.release(name)
        await self.flush()  # an entry handled but not deleted yet is not claimed again
        await self._renew_heartbeat()
        alive_since = await server_now(self.entries.database) - DEAD_AFTER
        alive = [
            doc["_id"]
            async for doc in self.instances.find({"seen_at": {"$gte": alive_since}}, {"_id": 1})
        ]
        keep_out = [
            instance
            for instance in alive
            if instance != self.instance and not self._known_dead(instance)
        ]
        # Shared, what a gone instance left goes to the bot's holder, like every entry.
        owner = None if self.shared else self.instance
        keep_out.append(owner)  # already ours: nothing to move
        # update_many is never retried by the driver: interrupted half-way, the entries it
        # moved are ours and picked up below, now or at the next heartbeat.
        await self.entries.update_many(
            {"bot": {"$in": names}, "owner": {"$nin": keep_out}},
            {"$set": {"owner": owner}},
        )
        return await self._hand_out({"bot": {"$in": names}, "owner": owner})

    async def pending(self, bots: Iterable[str]) -> list[JournalEntry]:
        """Shared: the entries of ``bots`` (held here) that nothing here holds yet, in
        ``update_id`` order; one query. Held until :meth:`finished` or :meth:`release`."""
        names = list(bots)
        if not names:
            return []
        return await self._hand_out({"bot": {"$in": names}, "owner": None})

    async def _hand_out(self, query: Document) -> list[JournalEntry]:
        """What ``query`` finds that nothing here holds, held from now on; nothing awaits
        between marking the entries held and returning them, so two hand-outs cannot
        interleave their entries (one chat's order)."""
        handed: list[JournalEntry] = []
        async with self._handing:
            found = await self.entries.find(query).sort("update_id", ASCENDING).to_list(None)
            for doc in found:
                held = self._in_flight.setdefault(doc["bot"], set())
                if doc["update_id"] not in held:
                    held.add(doc["update_id"])
                    handed.append(JournalEntry(doc["bot"], doc["update_id"], doc["update"]))
        return handed

    async def claim_starting(self, bot: str, *, own: bool = False) -> list[JournalEntry]:
        """:meth:`claim` for one bot that is starting, batched with the others starting.

        Thousands of bots start together; one claim for all that are waiting
        (four round trips) instead of one each keeps the start from queueing on
        the connection pool. A claim's failure is each waiting bot's.
        """
        future: asyncio.Future[list[JournalEntry]] = asyncio.get_running_loop().create_future()
        earlier = self._starting.pop(bot, None)
        if earlier is not None and not earlier[1].done():
            earlier[1].set_result([])  # a runner started again before its claim ran
        self._starting[bot] = (own, future)
        if self._start_claims is None or self._start_claims.done():
            self._start_claims = asyncio.create_task(
                self._claim_for_starting(), name="botyard-journal-start-claims"
            )
        return await future

    async def _claim_for_starting(self) -> None:
        while self._starting:
            await asyncio.sleep(0)  # bots started in the same tick join this batch
            batch, self._starting = self._starting, {}
            for bot, (own, _) in batch.items():
                if own:
                    self.release(bot)
            try:
                entries = await self.claim(batch)
            except Exception as error:
                for _, future in batch.values():
                    if not future.done():
                        future.set_exception(error)
                continue
            by_bot: dict[str, list[JournalEntry]] = {bot: [] for bot in batch}
            for entry in entries:
                by_bot[entry.bot].append(entry)
            for bot, (_, future) in batch.items():
                if future.done():  # its runner stopped meanwhile: the next claim hands them out
                    for entry in by_bot[bot]:
                        self.release(bot, entry.update_id)
                else:
                    future.set_result(by_bot[bot])

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
