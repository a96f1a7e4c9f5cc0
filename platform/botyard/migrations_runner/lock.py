"""A lock document, so that two ``botyard migrate`` never apply a migration twice.

Beanie's runner has no lock across processes: two of them started at once (two
deploys, a compose service restarted by hand) would both read "pending" and both
apply it. Holding one document in ``migrations_lock`` for the whole run
serialises them; the second waits, then finds nothing left to do. The lock
expires unless its holder renews it, so a killed holder blocks the next run only
until the expiry. Every time in the lock document is the database server's
(:func:`~botyard.database.server_time.server_now`), so runs on hosts whose
clocks disagree still agree on when it expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from botyard.database.documents import Document
from botyard.database.server_time import server_now
from botyard.errors import BotyardError

logger = logging.getLogger("botyard.migrate")

LOCK_COLLECTION = "migrations_lock"
LOCK_ID = "migrate"
#: How long a lock lives without renewal; the holder renews it every third of this.
DEFAULT_TTL = timedelta(seconds=60)
_POLL_SECONDS = (0.2, 0.5, 1.0, 2.0)


class LockTimeout(BotyardError, RuntimeError):
    """Another run held the lock for longer than we were willing to wait."""


class LockLost(BotyardError, RuntimeError):
    """Our lock expired or was taken over while we held it."""


@dataclass(frozen=True)
class LockHolder:
    """Who holds the lock, as its document says."""

    owner: str
    acquired_at: datetime
    expires_at: datetime

    def describe(self) -> str:
        return (
            f"{self.owner} (since {self.acquired_at:%Y-%m-%d %H:%M:%S} UTC, "
            f"expires {self.expires_at:%H:%M:%S} UTC unless renewed)"
        )


def default_owner() -> str:
    """``host:pid:random``: unique per run, and says where the run is when it blocks others."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class MigrationLock:
    """The migration lock of one database, for one owner."""

    def __init__(
        self,
        database: AsyncDatabase[Document],
        *,
        owner: str | None = None,
        ttl: timedelta = DEFAULT_TTL,
    ) -> None:
        self.collection: AsyncCollection[Document] = database[LOCK_COLLECTION]
        self.owner = owner or default_owner()
        self.ttl = ttl
        self.lost = False

    async def try_acquire(self) -> LockHolder | None:
        """Take the lock if it is free or expired; otherwise return its holder."""
        now = await server_now(self.collection.database)
        try:
            # Matches only an expired lock; a held one makes the upsert collide on _id.
            await self.collection.update_one(
                {"_id": LOCK_ID, "expires_at": {"$lt": now}},
                {"$set": {"owner": self.owner, "acquired_at": now, "expires_at": now + self.ttl}},
                upsert=True,
            )
        except DuplicateKeyError:
            document = await self.collection.find_one({"_id": LOCK_ID})
            if document is None:  # released in between: try again at once
                return await self.try_acquire()
            return LockHolder(
                str(document.get("owner")), document["acquired_at"], document["expires_at"]
            )
        return None

    async def acquire(
        self, timeout: float, on_wait: Callable[[LockHolder], None] | None = None
    ) -> None:
        """Wait up to ``timeout`` seconds for the lock; ``on_wait`` hears of each new holder."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        seen: str | None = None
        attempt = 0
        while True:
            holder = await self.try_acquire()
            if holder is None:
                return
            if holder.owner != seen and on_wait is not None:
                on_wait(holder)
            seen = holder.owner
            if loop.time() >= deadline:
                raise LockTimeout(
                    f"another migration run holds the lock: {holder.describe()}; "
                    f"gave up after {timeout:g}s (a killed run's lock frees itself at its "
                    f"expiry; delete the {LOCK_COLLECTION} document only if no run is alive)"
                )
            await asyncio.sleep(_POLL_SECONDS[min(attempt, len(_POLL_SECONDS) - 1)])
            attempt += 1

    async def renew(self) -> bool:
        """Push our expiry forward; ``False`` (and :attr:`lost`) when the lock is no longer ours."""
        now = await server_now(self.collection.database)
        result = await self.collection.update_one(
            {"_id": LOCK_ID, "owner": self.owner}, {"$set": {"expires_at": now + self.ttl}}
        )
        if result.matched_count == 0:
            self.lost = True
        return not self.lost

    async def release(self) -> None:
        """Drop the lock if it is still ours."""
        await self.collection.delete_one({"_id": LOCK_ID, "owner": self.owner})

    @contextlib.asynccontextmanager
    async def held(
        self, timeout: float, on_wait: Callable[[LockHolder], None] | None = None
    ) -> AsyncIterator[MigrationLock]:
        """Hold the lock for the block, renewing it in the background."""
        await self.acquire(timeout, on_wait)
        renewer = asyncio.create_task(self._keep_renewing())
        try:
            yield self
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            await self.release()

    def check(self) -> None:
        """Raise :class:`LockLost` if a renewal found the lock taken: stop before the next step."""
        if self.lost:
            raise LockLost(
                "the migration lock expired or was taken over while this run held it; "
                "stopped before the next migration (run `status` and `up` again)"
            )

    async def _keep_renewing(self) -> None:
        interval = self.ttl.total_seconds() / 3
        while True:
            await asyncio.sleep(interval)
            try:
                if not await self.renew():
                    logger.error("the migration lock was lost; stopping after this migration")
                    return
            except Exception:  # a blip must not kill the run; the next renewal retries
                logger.warning("renewing the migration lock failed; retrying", exc_info=True)
