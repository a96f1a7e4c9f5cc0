"""Running the cleanup sweep on the registry's ``cleanup.schedule``, inside the supervisor.

APScheduler's ``AsyncIOScheduler`` runs the job on the supervisor's own event
loop, from the in-memory job store: a persistent job store would block the loop
(``MongoDBJobStore`` is synchronous) and would only hold what the registry
already says, so the job is rebuilt from the registry at start and on reload.
One process runs one sweep at a time (``max_instances=1``); runs missed while
one was going on collapse into one (``coalesce``), and a run may start up to
half a schedule period late. With replicas only the leader sweeps
(``PlatformView.leading``); sweeps of several processes at once would be harmless:
the sweep is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC
from typing import Any

from aiogram import Bot
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from pymongo.asynchronous.database import AsyncDatabase

from botyard.cleanup.sweep import BotSweep, Sweeper, schedule_period, temporary_bot
from botyard.database.documents import Clock, utcnow
from botyard.registry.models import BotConfig, CleanupConfig
from botyard.runtime.view import PlatformView

__all__ = ["JOB_ID", "CleanupScheduler", "misfire_grace_time"]

logger = logging.getLogger("botyard.cleanup")

JOB_ID = "botyard-cleanup"


def misfire_grace_time(cleanup: CleanupConfig) -> int:
    """Seconds a run may start late and still run: half the schedule's period, at least 1."""
    return max(1, int(schedule_period(cleanup).total_seconds() / 2))


class CleanupScheduler:
    """The supervisor's cleanup job.

    Each run sweeps the bots of the registry in force when it starts, so bots
    added, removed or given another ``state_ttl`` by a reload are swept
    accordingly without touching the job. A running bot's ``on_state_expired``
    hook is called with that bot's ``Bot``; bots that are not running (disabled,
    or failed to start) get a temporary one. ``on_sweeps`` is called with every
    run's results (the metrics count them).
    """

    def __init__(
        self,
        database: AsyncDatabase[dict[str, Any]],
        platform: PlatformView,
        on_sweeps: Callable[[list[BotSweep]], None] | None = None,
        *,
        clock: Clock = utcnow,
    ) -> None:
        self._database = database
        self._platform = platform
        self._on_sweeps = on_sweeps
        self._clock = clock
        self._scheduler: Any = None
        self._schedule: str | None = None
        self._sweep: asyncio.Task[Any] | None = None

    @property
    def job(self) -> Any:
        """The APScheduler ``Job`` (``next_run_time``, ``trigger``...); ``None`` when stopped."""
        return None if self._scheduler is None else self._scheduler.get_job(JOB_ID)

    def start(self) -> None:
        """Start the scheduler on the running event loop, with the registry's job."""
        self._scheduler = AsyncIOScheduler(timezone=UTC, jobstores={"default": MemoryJobStore()})
        self._scheduler.start()
        self._add_job(self._platform.registry.cleanup)

    def rebuild(self) -> None:
        """Apply the registry's ``cleanup.schedule`` after a reload; no-op if unchanged.

        An unchanged schedule keeps its next run time, so frequent reloads
        cannot postpone an interval schedule indefinitely.
        """
        cleanup = self._platform.registry.cleanup
        if self._scheduler is not None and cleanup.schedule != self._schedule:
            self._add_job(cleanup)

    async def shutdown(self) -> None:
        """Stop scheduling, and cancel a sweep in progress (the sweep is idempotent)."""
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        self._scheduler = None
        sweep, self._sweep = self._sweep, None
        if sweep is not None and not sweep.done():
            sweep.cancel()
            await asyncio.gather(sweep, return_exceptions=True)

    async def run_once(self) -> list[BotSweep]:
        """Sweep every bot of the registry now (what the scheduled job does)."""
        registry = self._platform.registry
        sweeper = Sweeper.for_registry(
            self._database, registry, hook_bots=self._hook_bot, clock=self._clock
        )
        sweeps = await sweeper.run(registry.bots)
        if self._on_sweeps is not None:
            self._on_sweeps(sweeps)
        return sweeps

    def _add_job(self, cleanup: CleanupConfig) -> None:
        self._scheduler.add_job(
            self._job,
            cleanup.trigger(),
            id=JOB_ID,
            name="cleanup of stale FSM state",
            replace_existing=True,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=misfire_grace_time(cleanup),
        )
        self._schedule = cleanup.schedule
        next_run = self.job.next_run_time
        if next_run is None:
            logger.warning(
                "cleanup.schedule %r never fires: stale state is left to MongoDB's TTL "
                "index and to botyard cleanup",
                cleanup.schedule,
            )
        else:
            logger.info(
                "cleanup scheduled: %s, next run at %s",
                cleanup.schedule,
                next_run.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
            )

    async def _job(self) -> None:
        if not self._platform.leading:  # lost the leader role since the run was scheduled
            logger.info("cleanup skipped: this replica is not the leader")
            return
        self._sweep = asyncio.current_task()
        try:
            await self.run_once()
        finally:
            self._sweep = None

    def _hook_bot(self, config: BotConfig) -> AbstractAsyncContextManager[Bot]:
        running = self._platform.runners.get(config.name)
        if running is None:
            return temporary_bot(config)
        return contextlib.nullcontext(running.bot)
