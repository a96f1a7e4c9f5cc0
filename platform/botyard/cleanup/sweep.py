"""The sweep that deletes stale FSM state, one bot (namespace) at a time.

A record is stale when it has been idle for longer than its bot's *current*
``state_ttl``: ``updated_at + state_ttl <= now``. ``updated_at`` is the last
activity (a write, or a read that refreshed the expiry), so judging by it rather
than by the stored ``expires_at`` applies a shortened TTL to records written
under the old, longer one at the next sweep.

``expires_at`` (``updated_at + state_ttl``) is when a record expires, and what
users are shown. MongoDB's TTL index, the backstop behind this sweep, deletes by
``purge_at``: ``expires_at`` plus :func:`backstop_grace` (two schedule periods
and the TTL monitor's minute), so the sweep always gets to remove an expired
record first and call the bot's ``on_state_expired`` hook; the TTL monitor only
removes what no sweep reaches (a bot removed from the registry, a failing
sweep). The sweep keeps both dates in line with the registry where the backstop
would otherwise delete a conversation too early ("realigning"):

- a bot switched to ``never`` gets both dates cleared on all its records;
- a bot whose ``state_ttl`` (or the schedule's grace) grew gets
  ``expires_at = updated_at + state_ttl`` and ``purge_at = expires_at + grace``
  on records whose ``purge_at`` would come too early before the sweep after next.

The queries are :class:`~botyard.storage.records.FSMRecords`': through an
index, in batches of ``batch_size``. A sweep therefore never loads a record's
state or data, unless the bot has an ``on_state_expired`` hook that must be
given them, and running two sweeps at once removes each record once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.fsm.storage.base import StorageKey
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from botyard.database.documents import Clock, Document, utcnow
from botyard.registry.models import BotConfig, CleanupConfig, Registry
from botyard.runtime.routers import resolve_callable
from botyard.storage.records import FSMRecords, StoredRecord

__all__ = [
    "BotSweep",
    "ExpiredHook",
    "HookBots",
    "Sweeper",
    "backstop_grace",
    "schedule_period",
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
#: MongoDB's TTL monitor runs about once a minute; the backstop waits a little longer.
TTL_MONITOR_SLACK = timedelta(minutes=2)

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


@contextlib.asynccontextmanager
async def temporary_bot(config: BotConfig, why: str | None = None) -> AsyncIterator[Bot]:
    """A ``Bot`` with the registry's token and API server, closed when the sweep is done.

    ``why`` says why a bot has no token (``Registry.token_problems``), for the error.
    """
    if config.token is None:
        raise ValueError(
            "its on_state_expired hook needs a Bot, and the bot has no token "
            f"({why or 'set the token variable'}); nothing was removed"
        )
    if config.api_server:
        session = AiohttpSession(api=TelegramAPIServer.from_base(config.api_server))
    else:
        session = AiohttpSession()
    try:
        yield Bot(config.token_value, session=session)
    finally:
        await session.close()


def backstop_grace(cleanup: CleanupConfig, now: datetime | None = None) -> timedelta:
    """How long after a record's expiry MongoDB's TTL index may delete it.

    Two schedule periods plus the TTL monitor's minute: a run may start half a
    period late and one may be skipped, and the sweep, which calls
    ``on_state_expired``, must still remove the record before the backstop does.
    """
    return 2 * schedule_period(cleanup, now) + TTL_MONITOR_SLACK


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
        grace: timedelta = timedelta(0),
        hook_bots: HookBots = temporary_bot,
        hook_timeout: float = HOOK_TIMEOUT,
        clock: Clock = utcnow,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.records = FSMRecords(database)
        self.base_dir = base_dir
        self.batch_size = batch_size
        self.horizon = horizon
        #: ``purge_at - expires_at`` the realignment gives records (:func:`backstop_grace`).
        self.grace = grace
        self._hook_bots = hook_bots
        self.hook_timeout = hook_timeout
        #: "Now", against which records are stale.
        self.clock = clock

    @classmethod
    def for_registry(
        cls,
        database: AsyncDatabase[Document],
        registry: Registry,
        *,
        hook_bots: HookBots | None = None,
        clock: Clock = utcnow,
    ) -> Sweeper:
        """A sweeper with the registry's ``cleanup`` settings; by default each hook gets
        a :func:`temporary_bot`.

        ``purge_at`` is realigned up to :func:`backstop_grace` ahead (two schedule
        periods, plus the TTL monitor's minute): far enough that the backstop
        cannot strike before the next sweep even when one run is skipped.
        """
        grace = backstop_grace(registry.cleanup, clock())
        return cls(
            database,
            base_dir=registry.base_dir,
            batch_size=registry.cleanup.batch_size,
            horizon=grace,
            grace=grace,
            hook_bots=hook_bots
            or (lambda config: temporary_bot(config, registry.token_problems.get(config.name))),
            clock=clock,
        )

    async def run(self, bots: Iterable[BotConfig], *, dry_run: bool = False) -> list[BotSweep]:
        """Sweep each bot in turn; see :meth:`sweep_bot`."""
        return [await self.sweep_bot(bot, dry_run=dry_run) for bot in bots]

    async def sweep_bot(self, bot: BotConfig, *, dry_run: bool = False) -> BotSweep:
        """Remove one bot's stale records and realign its expiries; or count them (dry run)."""
        started = time.perf_counter()
        now = self.clock()
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
        removed = await self.records.count_stale(bot.namespace, bot.state_ttl, now)
        realigned = await self.records.count_to_realign(
            bot.namespace, bot.state_ttl, now, self.horizon, self.grace
        )
        return removed, realigned, 0

    async def _sweep(self, bot: BotConfig, now: datetime) -> tuple[int, int, int]:
        removed = hook_errors = 0
        if bot.state_ttl is not None:  # "never": nothing is stale, no hook to call
            if bot.on_state_expired is None:
                removed = await self.records.delete_stale(
                    bot.namespace, bot.state_ttl, now, self.batch_size
                )
            else:
                removed, hook_errors = await self._sweep_with_hook(bot, now)
        realigned = await self.records.realign(
            bot.namespace, bot.state_ttl, now, self.horizon, self.batch_size, grace=self.grace
        )
        return removed, realigned, hook_errors

    async def _sweep_with_hook(self, bot: BotConfig, now: datetime) -> tuple[int, int]:
        assert bot.on_state_expired is not None
        hook: ExpiredHook = resolve_callable(
            bot.on_state_expired, self.base_dir, where=f"bot {bot.name!r} on_state_expired"
        )
        async with self._hook_bots(bot) as telegram:
            calls = _HookCalls(bot.name, hook, telegram, self.hook_timeout)
            removed = await self.records.delete_stale(
                bot.namespace, bot.state_ttl, now, self.batch_size, before_delete=calls.call_all
            )
        return removed, calls.errors


class _HookCalls:
    """Calls a bot's ``on_state_expired`` for a batch; failures are logged and counted."""

    def __init__(self, bot_name: str, hook: ExpiredHook, telegram: Bot, timeout: float) -> None:
        self.bot_name = bot_name
        self.hook = hook
        self.telegram = telegram
        self.timeout = timeout
        self.errors = 0
        self._slots = asyncio.Semaphore(HOOK_CONCURRENCY)

    async def call_all(self, batch: list[StoredRecord]) -> None:
        await asyncio.gather(*(self._call(record) for record in batch))

    async def _call(self, record: StoredRecord) -> None:
        key = record.key
        async with self._slots:
            try:
                async with asyncio.timeout(self.timeout):
                    await self.hook(self.telegram, key, record.state, record.data)
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
