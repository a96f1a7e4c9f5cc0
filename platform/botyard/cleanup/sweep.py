"""The sweep that deletes stale FSM state, one bot (namespace) at a time.

A record is stale when it has been idle for longer than its bot's *current*
``state_ttl``: ``updated_at + state_ttl <= now``. ``updated_at`` is the last
activity (a write, or a read that refreshed the expiry), so judging by it rather
than by the stored ``expires_at`` applies a shortened TTL to records written
under the old, longer one at the next sweep.

``expires_at`` is what MongoDB's TTL index deletes by, the backstop behind this
sweep. The sweep keeps it in line with the registry where the backstop would
otherwise delete a conversation the registry says is alive ("realigning"):

- a bot switched to ``never`` gets ``expires_at`` cleared on all its records;
- a bot whose ``state_ttl`` grew gets ``expires_at = updated_at + state_ttl`` on
  records the old, shorter TTL would expire before the sweep after next.

Every query goes through an index (``(namespace, updated_at)``,
``(namespace, expires_at)``, ``_id``). Work is done in batches of
``batch_size``: fetch only the ``_id`` of up to that many matching records, then
delete (or update) exactly those, with the selection repeated in the filter so a
record that became active in between is kept. A sweep therefore never loads a
record's state or data, unless the bot has an ``on_state_expired`` hook that
must be given them, and running two sweeps at once removes each record once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.fsm.storage.base import StorageKey
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from botyard.database.documents import Document
from botyard.registry.models import BotConfig, CleanupConfig, Registry
from botyard.runtime.routers import resolve_callable
from botyard.storage import COLLECTION_NAME, KEY_FIELDS, utcnow
from botyard.storage.record import storage_key

__all__ = [
    "BotSweep",
    "ExpiredHook",
    "HookBots",
    "Sweeper",
    "delete_in_batches",
    "realign_filter",
    "schedule_period",
    "stale_filter",
    "temporary_bot",
]

logger = logging.getLogger("botyard.cleanup")

ExpiredHook = Callable[[Bot, StorageKey, str | None, dict[str, Any]], Awaitable[Any]]
"""``async def on_state_expired(bot, key, state, data)``, called before the record goes."""
HookBots = Callable[[BotConfig], AbstractAsyncContextManager[Bot]]
"""Lends the aiogram ``Bot`` a bot's hook is called with, for the duration of its sweep."""

#: A hook call that takes longer is abandoned (and counted as failed): a hung
#: hook must not hold the sweep, which runs one instance at a time, forever.
HOOK_TIMEOUT = 30.0
#: Hook calls of one batch running at once (each may send a Telegram message).
HOOK_CONCURRENCY = 8
#: MongoDB's TTL monitor runs about once a minute; realign a little further ahead.
TTL_MONITOR_SLACK = timedelta(minutes=2)

_ID_ONLY: Document = {"_id": 1}
_HOOK_PROJECTION: Document = {
    **dict.fromkeys(KEY_FIELDS, 1),
    "bot_id": 1,
    "state": 1,
    "data": 1,
}
_BY_ID = [("_id", 1)]
_BY_EXPIRY = [("namespace", 1), ("expires_at", 1)]
_ANY_DATE = datetime.min.replace(tzinfo=UTC)
#: Errors whose message says it all (bad hook, no token, database down): no traceback.
_EXPLAINED = (ValueError, PyMongoError)


@dataclass(frozen=True)
class BotSweep:
    """What one sweep did for one bot; in a dry run, what it would do."""

    bot: str
    namespace: str
    state_ttl: timedelta | None
    #: Stale records deleted (dry run: found).
    removed: int = 0
    #: Records whose ``expires_at`` was brought in line with ``state_ttl``.
    realigned: int = 0
    #: ``on_state_expired`` calls that raised or timed out.
    hook_errors: int = 0
    seconds: float = 0.0
    #: Why this bot's sweep stopped early; ``None`` if it completed.
    error: str | None = None
    dry_run: bool = False


def stale_filter(namespace: str, state_ttl: timedelta | None, now: datetime) -> Document | None:
    """The records of ``namespace`` idle for ``state_ttl`` at ``now``; ``None`` for never."""
    if state_ttl is None:
        return None
    return {"namespace": namespace, "updated_at": {"$lte": now - state_ttl}}


def realign_filter(
    namespace: str, state_ttl: timedelta | None, now: datetime, horizon: timedelta
) -> Document:
    """Records whose ``expires_at`` would let the TTL index delete them too early.

    Only records expiring within ``horizon`` are looked at: further ones get
    their turn at a later sweep, and the range keeps this an index scan.
    """
    if state_ttl is None:
        # $ne: null is not an index range on every server; every real date is after year 1.
        return {"namespace": namespace, "expires_at": {"$gt": _ANY_DATE}}
    return {
        "namespace": namespace,
        "expires_at": {"$lte": now + horizon},
        "updated_at": {"$gt": now - state_ttl},
        "$expr": {"$lt": ["$expires_at", _due(state_ttl)]},
    }


def _due(state_ttl: timedelta | None) -> Document | None:
    """``updated_at + state_ttl`` as an aggregation expression."""
    if state_ttl is None:
        return None
    return {"$add": ["$updated_at", int(state_ttl.total_seconds() * 1000)]}


def schedule_period(cleanup: CleanupConfig, now: datetime | None = None) -> timedelta:
    """The longest time between two runs of the cleanup schedule, over its next few runs.

    A cron expression that never fires again (``0 0 31 2 *``) counts as once a year.
    """
    interval = cleanup.interval
    if interval is not None:
        return interval
    trigger = cleanup.trigger()
    fire_times: list[datetime] = []
    previous, moment = None, now or utcnow()
    for _ in range(11):
        upcoming = trigger.get_next_fire_time(previous, moment)
        if upcoming is None:
            break
        fire_times.append(upcoming)
        previous, moment = upcoming, upcoming + timedelta(seconds=1)
    return max(
        (later - earlier for earlier, later in itertools.pairwise(fire_times)),
        default=timedelta(days=366),
    )


async def delete_in_batches(
    collection: AsyncCollection[Document],
    query: Mapping[str, Any],
    batch_size: int,
    *,
    projection: Mapping[str, Any] = _ID_ONLY,
    before_delete: Callable[[list[Document]], Awaitable[None]] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> int:
    """Delete what ``query`` matches, ``batch_size`` records per round trip; return the count.

    ``before_delete`` sees each batch, fetched with ``projection``, before it
    goes; ``on_batch`` is told how many each batch removed (for progress bars).
    """

    async def delete(batch: list[Document]) -> int:
        if before_delete is not None:
            await before_delete(batch)
        result = await collection.delete_many(_within(batch, query), hint=_BY_ID)
        if on_batch is not None:
            on_batch(result.deleted_count)
        return result.deleted_count

    return await _in_batches(collection, query, batch_size, delete, projection=projection)


async def _in_batches(
    collection: AsyncCollection[Document],
    query: Mapping[str, Any],
    batch_size: int,
    apply: Callable[[list[Document]], Awaitable[int]],
    *,
    projection: Mapping[str, Any] = _ID_ONLY,
    hint: list[tuple[str, int]] | None = None,
) -> int:
    """Fetch up to ``batch_size`` matches, ``apply`` to them, repeat until none are left.

    ``apply`` must make the records stop matching (delete or fix them);
    otherwise the next fetch would return them again.
    """
    done = 0
    while True:
        cursor = collection.find(query, projection, limit=batch_size, batch_size=batch_size)
        if hint is not None:
            cursor = cursor.hint(hint)
        batch = await cursor.to_list()
        if not batch:
            return done
        done += await apply(batch)
        if len(batch) < batch_size:
            return done


def _within(batch: list[Document], query: Mapping[str, Any]) -> Document:
    """``query`` narrowed to the batch: a record changed since it was fetched is left alone."""
    return {**query, "_id": {"$in": [document["_id"] for document in batch]}}


@contextlib.asynccontextmanager
async def temporary_bot(config: BotConfig) -> AsyncIterator[Bot]:
    """A ``Bot`` with the registry's token and API server, closed when the sweep is done."""
    if config.token is None:
        raise ValueError(
            "its on_state_expired hook needs a Bot, and the bot has no token "
            "(set the token's variable); nothing was removed"
        )
    if config.api_server:
        session = AiohttpSession(api=TelegramAPIServer.from_base(config.api_server))
    else:
        session = AiohttpSession()
    try:
        yield Bot(config.token_value, session=session)
    finally:
        await session.close()


class Sweeper:
    """Sweeps the stale state of the bots it is given, one bot after another.

    A failure in one bot's sweep (a broken hook import, a lost connection) is
    logged and reported in that bot's :class:`BotSweep`; the others go on.
    """

    def __init__(
        self,
        database: AsyncDatabase[Document],
        *,
        base_dir: Path,
        batch_size: int = 1000,
        horizon: timedelta = timedelta(minutes=30),
        hook_bots: HookBots = temporary_bot,
        hook_timeout: float = HOOK_TIMEOUT,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.collection: AsyncCollection[Document] = database[COLLECTION_NAME]
        self.base_dir = base_dir
        self.batch_size = batch_size
        self.horizon = horizon
        self._hook_bots = hook_bots
        self.hook_timeout = hook_timeout

    @classmethod
    def for_registry(
        cls,
        database: AsyncDatabase[Document],
        registry: Registry,
        *,
        hook_bots: HookBots = temporary_bot,
    ) -> Sweeper:
        """A sweeper with the registry's ``cleanup`` settings.

        ``expires_at`` is realigned up to two schedule periods ahead, plus the TTL
        monitor's minute: far enough that the backstop cannot strike before the
        next sweep even when one run is skipped.
        """
        return cls(
            database,
            base_dir=registry.base_dir,
            batch_size=registry.cleanup.batch_size,
            horizon=2 * schedule_period(registry.cleanup) + TTL_MONITOR_SLACK,
            hook_bots=hook_bots,
        )

    async def run(self, bots: Iterable[BotConfig], *, dry_run: bool = False) -> list[BotSweep]:
        """Sweep each bot in turn; see :meth:`sweep_bot`."""
        return [await self.sweep_bot(bot, dry_run=dry_run) for bot in bots]

    async def sweep_bot(self, bot: BotConfig, *, dry_run: bool = False) -> BotSweep:
        """Remove one bot's stale records and realign its expiries; or count them (dry run)."""
        started = time.perf_counter()
        now = utcnow()
        try:
            if dry_run:
                removed, realigned, hook_errors = await self._count(bot, now)
            else:
                removed, realigned, hook_errors = await self._sweep(bot, now)
        except Exception as error:  # one bot's trouble must not stop the others' sweep
            seconds = time.perf_counter() - started
            logger.error(
                "cleanup bot=%s failed after %.2fs: %s",
                bot.name,
                seconds,
                error,
                exc_info=not isinstance(error, _EXPLAINED),
            )
            return BotSweep(
                bot.name, bot.namespace, bot.state_ttl, seconds=seconds, error=str(error)
            )
        seconds = time.perf_counter() - started
        result = BotSweep(
            bot.name,
            bot.namespace,
            bot.state_ttl,
            removed=removed,
            realigned=realigned,
            hook_errors=hook_errors,
            seconds=seconds,
            dry_run=dry_run,
        )
        if not dry_run:
            extra = "".join(
                f" {name}={value}"
                for name, value in (("realigned", realigned), ("hook_errors", hook_errors))
                if value
            )
            logger.info("cleanup bot=%s removed=%d in %.2fs%s", bot.name, removed, seconds, extra)
        return result

    async def _count(self, bot: BotConfig, now: datetime) -> tuple[int, int, int]:
        stale = stale_filter(bot.namespace, bot.state_ttl, now)
        removed = 0 if stale is None else await self.collection.count_documents(stale)
        realign = realign_filter(bot.namespace, bot.state_ttl, now, self.horizon)
        realigned = await self.collection.count_documents(realign, hint=_BY_EXPIRY)
        return removed, realigned, 0

    async def _sweep(self, bot: BotConfig, now: datetime) -> tuple[int, int, int]:
        removed = hook_errors = 0
        stale = stale_filter(bot.namespace, bot.state_ttl, now)
        if stale is not None:
            if bot.on_state_expired is None:
                removed = await delete_in_batches(self.collection, stale, self.batch_size)
            else:
                removed, hook_errors = await self._sweep_with_hook(bot, stale)
        return removed, await self._realign(bot, now), hook_errors

    async def _sweep_with_hook(self, bot: BotConfig, stale: Document) -> tuple[int, int]:
        assert bot.on_state_expired is not None
        hook: ExpiredHook = resolve_callable(
            bot.on_state_expired, self.base_dir, where=f"bot {bot.name!r} on_state_expired"
        )
        async with self._hook_bots(bot) as telegram:
            calls = _HookCalls(bot.name, hook, telegram, self.hook_timeout)
            removed = await delete_in_batches(
                self.collection,
                stale,
                self.batch_size,
                projection=_HOOK_PROJECTION,
                before_delete=calls.call_all,
            )
        return removed, calls.errors

    async def _realign(self, bot: BotConfig, now: datetime) -> int:
        query = realign_filter(bot.namespace, bot.state_ttl, now, self.horizon)
        expiry = [{"$set": {"expires_at": _due(bot.state_ttl)}}]

        async def update(batch: list[Document]) -> int:
            result = await self.collection.update_many(_within(batch, query), expiry, hint=_BY_ID)
            return result.modified_count

        # Hinted: the planner could pick (namespace, updated_at), a scan of every live record.
        return await _in_batches(self.collection, query, self.batch_size, update, hint=_BY_EXPIRY)


class _HookCalls:
    """Calls a bot's ``on_state_expired`` for a batch; failures are logged and counted."""

    def __init__(self, bot_name: str, hook: ExpiredHook, telegram: Bot, timeout: float) -> None:
        self.bot_name = bot_name
        self.hook = hook
        self.telegram = telegram
        self.timeout = timeout
        self.errors = 0
        self._slots = asyncio.Semaphore(HOOK_CONCURRENCY)

    async def call_all(self, batch: list[Document]) -> None:
        await asyncio.gather(*(self._call(document) for document in batch))

    async def _call(self, document: Document) -> None:
        key = storage_key(document)
        state = document.get("state")
        data = dict(document.get("data") or {})
        async with self._slots:
            try:
                async with asyncio.timeout(self.timeout):
                    await self.hook(self.telegram, key, state, data)
            except TimeoutError:
                self.errors += 1
                logger.error(
                    "cleanup bot=%s on_state_expired timed out after %.0fs for chat=%s user=%s; "
                    "the record is removed anyway",
                    self.bot_name,
                    self.timeout,
                    key.chat_id,
                    key.user_id,
                )
            except Exception:  # the hook is user code: any error is logged, the sweep goes on
                self.errors += 1
                logger.exception(
                    "cleanup bot=%s on_state_expired failed for chat=%s user=%s; "
                    "the record is removed anyway",
                    self.bot_name,
                    key.chat_id,
                    key.user_id,
                )
