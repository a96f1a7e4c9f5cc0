"""One replica's part in the cluster: heartbeat, compute its share, hand bots over.

Every :attr:`ClusterConfig.heartbeat_interval` the replica

1. stops every bot at once if its last successful heartbeat is older than
   :attr:`ClusterConfig.fence` (MongoDB unreachable, or the process was
   paused): by then the others may be about to take its bots over;
2. writes its heartbeat (the server's time comes back with it);
3. reads the members, counts as live those heard from within
   :attr:`ClusterConfig.lapse` on the server's clock, renews or takes the
   leader lease, and computes the assignment (:func:`~botyard.cluster.assignment.assign`);
4. hands over the bots it holds that are no longer its share (in the
   background: in-flight updates finish, the offset is confirmed, then the
   claim is released) and takes the claims of its share that are free, its
   own, or held by a replica that is gone, and starts those bots.

Runners ask :meth:`Replica.remaining` before each ``getUpdates`` and keep the
long poll shorter than that, so a replica that is paused or cut off has no
request open at Telegram when the others take over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Collection
from datetime import datetime, timedelta
from typing import Protocol

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from botyard.cluster.assignment import assign
from botyard.cluster.claims import Claim, Claims
from botyard.cluster.leader import LeaderLease
from botyard.cluster.membership import Member, Membership, new_replica_id
from botyard.database.documents import Document
from botyard.registry.models import ClusterConfig

__all__ = ["FORGET_AFTER", "BotHost", "Replica"]

logger = logging.getLogger("botyard.cluster")

#: Documents of replicas that died (no clean leave) are deleted by the leader after this.
FORGET_AFTER = timedelta(hours=1)
#: A replica looks again this long after another one's heartbeat would lapse.
LAPSE_MARGIN = 0.05


class BotHost(Protocol):
    """What the replica needs from the supervisor."""

    def wanted_bots(self) -> Collection[str]:
        """The enabled bots of the registry in force."""

    def held_bots(self) -> Collection[str]:
        """The bots that have a runner here."""

    async def start_bots(self, names: Collection[str]) -> None:
        """Start these bots (their claims are held)."""

    async def stop_bots(self, names: Collection[str]) -> None:
        """Stop these bots: finish in-flight updates, confirm the offset while allowed."""

    async def store_finished(self) -> None:
        """Make durable what stopped bots finished (delete their handled journal entries)
        before their claims are released: the next holder must not get them again."""

    async def lead(self, leading: bool) -> None:
        """Start or stop what only the leader runs."""


class Replica:
    """This process as a member of the cluster."""

    def __init__(
        self,
        database: AsyncDatabase[Document],
        config: ClusterConfig,
        host: BotHost,
        *,
        replica_id: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.id = replica_id or new_replica_id()
        self.config = config
        self._host = host
        self._clock = clock
        self.membership = Membership(database, self.id)
        self.claims = Claims(database, self.id)
        self.leader = LeaderLease(database, self.id)
        self._deadline = -math.inf
        self._heartbeats = 0
        self._handing_over: set[str] = set()
        self._unreleased: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._unreachable = False
        self._closed = False
        #: The server's time of the latest heartbeat, and this clock when it returned.
        self._stamped: tuple[datetime, float] | None = None
        #: This clock when the first live replica's heartbeat lapses (the next look is then).
        self._lapse_at = math.inf
        #: This replica's share in the latest assignment.
        self.assigned: frozenset[str] = frozenset()
        #: Live members in the latest read, this one included.
        self.live: tuple[Member, ...] = ()
        self.leading = False
        #: Set once the replica joined and started its whole share (for ``/readyz``).
        self.settled = asyncio.Event()
        #: ``taken`` and ``released`` bots, and ``fenced`` (stopped for a lapsed claim).
        self.handovers: Counter[str] = Counter()

    # what runners and probes ask

    def remaining(self) -> float:
        """Seconds this replica may still poll its bots without a new heartbeat."""
        return self._deadline - self._clock()

    @property
    def held(self) -> set[str]:
        """Bots running here or still being handed over."""
        return set(self._host.held_bots()) | self._handing_over

    @property
    def share(self) -> frozenset[str] | None:
        """The bots this replica serves once it joined and started them; ``None`` before."""
        return self.assigned if self.settled.is_set() else None

    def wake(self) -> None:
        """Rebalance now (the registry changed) instead of at the next heartbeat."""
        self._wake.set()

    def stopped(self, names: Collection[str]) -> None:
        """Bots the supervisor stopped on its own (a reload): release their claims."""
        self._unreleased.update(names)
        self._wake.set()

    # the loop

    def close(self) -> None:
        """End :meth:`run` (a cancellation alone can be lost inside PyMongo on Python 3.11)."""
        self._closed = True
        self._wake.set()

    async def run(self) -> None:
        """Heartbeat and rebalance until :meth:`close` or cancelled.

        The heartbeat never waits for a rebalance (taking thousands of claims can
        take longer than the fence time): rebalancing runs in a task of its own,
        after each heartbeat, on the server time that heartbeat returned. When
        another replica's heartbeat lapses before the next interval is over, the
        next heartbeat comes right then: its bots are taken over at once, not
        up to an interval later.
        """
        interval = self.config.heartbeat_interval
        due: asyncio.Queue[datetime] = asyncio.Queue(maxsize=1)
        rebalancer = asyncio.create_task(self._rebalance_when_due(due), name="botyard-rebalance")
        try:
            while not self._closed:
                started = self._clock()
                now = await self._beat()
                if now is not None and due.empty():
                    due.put_nowait(now)
                delay = interval - (self._clock() - started)
                if self._lapse_at - self._clock() < delay:
                    # Once: until a rebalance looked, the other beats keep the interval.
                    delay, self._lapse_at = self._lapse_at - self._clock(), math.inf
                delay = max(0.0, delay)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                self._wake.clear()
        finally:
            rebalancer.cancel()
            await asyncio.gather(rebalancer, return_exceptions=True)

    async def _rebalance_when_due(self, due: asyncio.Queue[datetime]) -> None:
        while not self._closed:
            await self._rebalance_logged(await due.get())

    async def tick(self) -> None:
        """One heartbeat and the rebalancing after it; MongoDB errors are logged, not raised."""
        now = await self._beat()
        if now is not None:
            await self._rebalance_logged(now)

    async def _rebalance_logged(self, now: datetime) -> None:
        try:
            await self._rebalance(now)
        except PyMongoError as error:
            logger.warning("cluster: rebalancing failed, retried next heartbeat: %s", error)

    async def _beat(self) -> datetime | None:
        """Fence if the claim lapsed, write the heartbeat; the server's time, or ``None``."""
        await self._fence_if_lapsed()
        sent = self._clock()
        try:
            async with asyncio.timeout(self.config.fence):
                now = await self.membership.heartbeat(self.held)
        except (PyMongoError, TimeoutError) as error:
            if not self._unreachable:
                logger.warning(
                    "cluster: heartbeat of replica %s failed (%s); its bots stop in %.1fs "
                    "unless MongoDB answers",
                    self.id,
                    type(error).__name__,
                    max(0.0, self.remaining()),
                )
            self._unreachable = True
            return None
        if self._unreachable:
            logger.info("cluster: replica %s reaches MongoDB again", self.id)
            self._unreachable = False
        # A heartbeat answered after the deadline cannot vouch for the time before it:
        # the others may have taken the bots meanwhile. Its runners stopped polling.
        await self._fence_if_lapsed()
        self._deadline = sent + self.config.fence
        self._heartbeats += 1
        self._stamped = (now, self._clock())
        return now

    async def _rebalance(self, now: datetime) -> None:
        members = await self.membership.members()
        lapse = self.config.lapse
        self.live = tuple(m for m in members if m.silent_for(now) < lapse or m.id == self.id)
        self._watch_lapses(now)
        if self._heartbeats == 1:
            logger.info("cluster: replica %s joined, %d live replica(s)", self.id, len(self.live))
        await self._lead(await self.leader.hold(now, lapse, leading=self.leading))
        forgotten = now - FORGET_AFTER
        if self.leading and any(m.heartbeat_at < forgotten for m in members):
            await self.membership.forget(forgotten)
        if self._heartbeats < 2:
            return  # replicas starting together see each other before claiming anything
        serving = [m.id for m in self.live if not m.leaving]
        share = {
            bot
            for bot, member in assign(self._host.wanted_bots(), serving).items()
            if member == self.id
        }
        self.assigned = frozenset(share)
        await self._release_pending()
        running = set(self._host.held_bots())
        leaving = running - share - self._handing_over
        if leaving:
            self._hand_over(leaving)
        wanted = share - running - self._handing_over
        if wanted:
            fences = self.handovers["fenced"]
            taken = await self._take(wanted, now)
            if self.handovers["fenced"] != fences or self.remaining() <= 0:
                return  # fenced meanwhile: the claims are retaken after the next heartbeat
            if taken:
                self.handovers["taken"] += len(taken)
                await self._host.start_bots(sorted(taken))
        if share <= set(self._host.held_bots()):
            self.settled.set()

    def _watch_lapses(self, now: datetime) -> None:
        """Note when, on this clock, the first other live replica's heartbeat lapses."""
        others = [m.heartbeat_at for m in self.live if m.id != self.id]
        if not others or self._stamped is None:
            self._lapse_at = math.inf
            return
        stamp, returned = self._stamped
        # `now` happened before its heartbeat returned: looking later is safe, earlier is not.
        local_now = returned - (stamp - now).total_seconds()
        until = (min(others) - now).total_seconds() + self.config.lapse
        self._lapse_at = local_now + until + LAPSE_MARGIN

    async def _take(self, wanted: set[str], now: datetime) -> set[str]:
        claims = await self.claims.read(wanted)
        others = {c.holder for c in claims.values() if c.holder not in (None, self.id)}
        alive: set[str] = set()
        if others:
            # Read after the claims: a holder that renewed its heartbeat and then
            # re-took a claim shows up alive here, or its new epoch fails the update.
            members = await self.membership.members()
            alive = {m.id for m in members if m.silent_for(now) < self.config.lapse}
        free: dict[str, Claim | None] = {}
        for bot in wanted:
            claim = claims.get(bot)
            if claim is None or claim.holder in (None, self.id) or claim.holder not in alive:
                free[bot] = claim
        if not free:
            return set()
        return await self.claims.take(free, now)

    def _hand_over(self, names: set[str]) -> None:
        self._handing_over |= names
        task = asyncio.create_task(self._release(sorted(names)), name="botyard-handover")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _release(self, names: list[str]) -> None:
        try:
            await self._host.stop_bots(names)
            self._unreleased.update(names)
            self.handovers["released"] += len(names)
            logger.info("cluster: handed over %d bot(s): %s", len(names), ", ".join(names))
            await self._release_pending()
        except PyMongoError as error:
            logger.warning("cluster: releasing bots failed, retried next heartbeat: %s", error)
        finally:
            self._handing_over.difference_update(names)
            self._wake.set()

    async def _release_pending(self) -> None:
        if self._unreleased and self.remaining() > 0:
            pending = set(self._unreleased)
            await self._host.store_finished()
            await self.claims.release(pending)
            self._unreleased -= pending

    async def _fence_if_lapsed(self) -> None:
        """Stop everything once the claim lapsed: the others may take the bots at any moment."""
        if self.remaining() > 0 or not (self._host.held_bots() or self.leading):
            return
        names = sorted(self._host.held_bots())
        logger.error(
            "cluster: no heartbeat for %.1fs (MongoDB unreachable or process paused): "
            "stopping %d bot(s) before the other replicas take them over",
            self.config.fence,
            len(names),
        )
        await self._lead(False)
        self.settled.clear()
        self.handovers["fenced"] += len(names)
        await self._host.stop_bots(names)

    async def _lead(self, leading: bool) -> None:
        if leading != self.leading:
            role = "is" if leading else "is no longer"
            logger.info("cluster: replica %s %s the leader", self.id, role)
            self.leading = leading
            await self._host.lead(leading)

    def may_lead(self) -> bool:
        """Whether leader-only work may run right now (the lease is held and not lapsed)."""
        return self.leading and self.remaining() > 0

    # leaving

    async def leave(self) -> None:
        """Hand every bot over, release the claims and the lease, remove the document.

        With MongoDB unreachable the bots still stop; the writes are tried for
        at most :attr:`ClusterConfig.fence` seconds, after which the others
        take the bots over anyway once the heartbeat lapsed.
        """
        for task in list(self._tasks):
            await asyncio.gather(task, return_exceptions=True)
        names = sorted(self._host.held_bots())
        logger.info("cluster: replica %s leaving, handing over %d bot(s)", self.id, len(names))
        beat = asyncio.create_task(self._beat_while_leaving(), name="botyard-leaving")
        try:
            if names:
                await self._host.stop_bots(names)
                self._unreleased.update(names)
            await self._lead(False)
        finally:
            beat.cancel()
            await asyncio.gather(beat, return_exceptions=True)
        try:
            async with asyncio.timeout(self.config.fence):
                await self._release_pending()
                await self.leader.resign()
                await self.membership.leave()
        except (PyMongoError, TimeoutError) as error:
            logger.warning(
                "cluster: replica %s left without releasing its bots (%s); the others take "
                "them over when its heartbeat lapses",
                self.id,
                type(error).__name__,
            )
        else:
            logger.info("cluster: replica %s left", self.id)

    async def _beat_while_leaving(self) -> None:
        """Stay alive for the others while in-flight updates finish: they wait for the release."""
        while True:
            sent = self._clock()
            with contextlib.suppress(PyMongoError, TimeoutError):
                async with asyncio.timeout(self.config.fence):
                    await self.membership.heartbeat(self.held, leaving=True)
                if self.remaining() > 0:  # after a lapse, the runners stay fenced
                    self._deadline = sent + self.config.fence
            await asyncio.sleep(self.config.heartbeat_interval)
