"""One bot's life: its Dispatcher, its polling loop, and how its updates are handled.

A runner never lets its bot's trouble reach another bot: a revoked token stops
this runner alone, a crash restarts it with backoff, and a slow handler only
holds one of this bot's own concurrency slots.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Protocol

from aiogram import Bot, Dispatcher
from aiogram.exceptions import (
    TelegramConflictError,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.fsm.strategy import FSMStrategy
from aiogram.methods import GetUpdates
from aiogram.types import Update
from aiogram.utils.backoff import Backoff, BackoffConfig
from pymongo.errors import ConnectionFailure, OperationFailure, ServerSelectionTimeoutError

from botyard.logs import LogContext, log_context
from botyard.runtime.log_context import LogContextMiddleware
from botyard.runtime.ordering import KeyedExecutor, OffsetTracker, ordering_key
from botyard.runtime.routers import BotRouters, RouterBuildError
from botyard.storage import BeanieStorage

logger = logging.getLogger("botyard.bot")

#: Errors after which handling an update again can succeed: the update is retried.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionFailure,  # includes AutoReconnect and NetworkTimeout
    ServerSelectionTimeoutError,
    TelegramNetworkError,
    TelegramServerError,
    TelegramRetryAfter,
    # A factory that worked at start can work again; the update waits meanwhile.
    RouterBuildError,
)

RESTART_BACKOFF = BackoffConfig(min_delay=1.0, max_delay=60.0, factor=2.0, jitter=0.1)
#: A bot that ran this many seconds before failing was healthy: it restarts at the minimum delay.
HEALTHY_PERIOD = 60.0
RETRY_BACKOFF = BackoffConfig(min_delay=0.5, max_delay=30.0, factor=2.0, jitter=0.1)
POLLING_TIMEOUT = 30
#: A long poll not rejected within this many seconds was accepted (errors come at once).
ACCEPTED_AFTER = 1.0
#: In Telegram's 409 answer to getUpdates while the bot has a webhook.
WEBHOOK_IS_SET = "webhook is active"
#: Poll again after this long even if no update finished, to pick up new chats.
REPOLL_WHILE_BUSY = 1.0


class BotStatus(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    BACKING_OFF = "backing_off"
    UNAUTHORIZED = "unauthorized"
    CONFLICT = "conflict"
    STOPPED = "stopped"


@dataclass
class BotCounters:
    received: int = 0
    handled: int = 0
    errors: int = 0
    retries: int = 0
    handling_seconds: float = 0.0


class WebhookBinding(Protocol):
    """How a bot in webhook mode receives updates (see :mod:`botyard.webhook.endpoint`)."""

    async def open(self, runner: BotRunner) -> None:
        """Hand over the updates accepted earlier but not handled, then set the webhook."""

    async def close(self, runner: BotRunner) -> None:
        """Stop accepting this bot's requests (Telegram retries them later)."""


@dataclass
class BotSpec:
    """What a runner needs to know about its bot, resolved from the registry."""

    name: str
    token: str
    routers: BotRouters
    storage: BeanieStorage
    fsm_strategy: FSMStrategy = FSMStrategy.USER_IN_CHAT
    max_concurrent_updates: int = 64
    polling: bool = True
    #: Extra objects handed to every handler by aiogram's dependency injection.
    workflow_data: dict[str, Any] = field(default_factory=dict)
    #: Set for a bot in webhook mode (``polling`` is then False).
    webhook: WebhookBinding | None = None
    #: Called with the seconds each finished update took (the latency histogram).
    observe_handling: Callable[[float], None] | None = None
    #: Delays between restarts of a crashed polling loop.
    restart_backoff: BackoffConfig = RESTART_BACKOFF
    #: Seconds of running after which a crash restarts at the shortest delay again.
    healthy_period: float = HEALTHY_PERIOD
    #: Delays between retries of a failed getUpdates, and of an update after a transient error.
    retry_backoff: BackoffConfig = RETRY_BACKOFF


StatusListener = Callable[["BotRunner", BotStatus, str], None]


class BotRunner:
    """Runs one bot: start, poll (at-least-once), handle, stop."""

    def __init__(self, spec: BotSpec, bot: Bot, on_status: StatusListener | None = None) -> None:
        self.spec = spec
        self.name = spec.name
        self.bot = bot
        self.counters = BotCounters()
        self.status = BotStatus.STOPPED
        self.status_detail = ""
        self._on_status = on_status
        self._dispatcher: Dispatcher | None = None
        self.executor = KeyedExecutor(spec.max_concurrent_updates)
        self.offsets = OffsetTracker()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def dispatcher(self) -> Dispatcher:
        """The bot's own Dispatcher, built on first use.

        An idle bot never needs one, and a Dispatcher with its routers is most
        of what a bot costs (about 80 KB and 2.5 ms), so it is built for the
        first update, or at start when a router has startup or shutdown handlers.
        """
        if self._dispatcher is None:
            dispatcher = Dispatcher(
                storage=self.spec.storage,
                fsm_strategy=self.spec.fsm_strategy,
                **self.spec.workflow_data,
            )
            self.spec.storage.install(dispatcher)
            dispatcher.update.outer_middleware(LogContextMiddleware(self.name))
            self.spec.routers.install_middlewares(dispatcher)
            dispatcher.include_routers(*self.spec.routers.build())
            self._dispatcher = dispatcher
        return self._dispatcher

    @property
    def allowed_updates(self) -> list[str]:
        """The update types the bot's routers handle, known without building them."""
        return self.spec.routers.used_update_types

    # lifecycle

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=f"botyard-bot-{self.name}")

    @property
    def done(self) -> bool:
        return self._task is None or self._task.done()

    async def stop(self, timeout: float = 30.0) -> bool:
        """Stop polling, let in-flight updates finish (bounded), confirm what finished.

        Returns ``False`` if some updates were still running after ``timeout``:
        they were cancelled and stay unconfirmed, so Telegram delivers them again.
        """
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.spec.webhook is not None:
            await self.spec.webhook.close(self)
        drained = await self.executor.join(timeout)
        if not drained:
            logger.warning(
                "bot=%s updates still running after %.0fs; left unconfirmed for redelivery"
                + (" (kept in the journal)" if self.spec.webhook is not None else ""),
                self.name,
                timeout,
            )
            await self.executor.cancel()
        await self._confirm_offset()
        dispatcher, self._dispatcher = self._dispatcher, None
        if dispatcher is not None:
            await dispatcher.emit_shutdown(bot=self.bot, dispatcher=dispatcher)
            _detach_routers(dispatcher)
        if self.status not in {BotStatus.UNAUTHORIZED}:
            self._set_status(BotStatus.STOPPED)
        return drained

    def _set_status(self, status: BotStatus, detail: str = "") -> None:
        if status == self.status and detail == self.status_detail:
            return
        self.status, self.status_detail = status, detail
        if self._on_status is not None:
            self._on_status(self, status, detail)

    async def _run(self) -> None:
        log_context.set(LogContext(bot=self.name))
        backoff = Backoff(self.spec.restart_backoff)
        self._set_status(BotStatus.STARTING)
        if self.spec.routers.lifecycle_hooks:
            await self.dispatcher.emit_startup(bot=self.bot, dispatcher=self.dispatcher)
        while not self._stopping:
            served_at = time.monotonic()
            try:
                await self._serve()
                return
            except TelegramUnauthorizedError:
                self._set_status(
                    BotStatus.UNAUTHORIZED,
                    "Telegram rejected the token (401): revoked or wrong; bot stopped",
                )
                return
            except TelegramConflictError as error:
                _reset_if_healthy(backoff, self.status, served_at, self.spec.healthy_period)
                detail = (
                    "409 Conflict: another process polls this token, or a webhook is set "
                    f"({error.message}); retrying in {backoff.next_delay:.0f}s"
                )
                self._set_status(BotStatus.CONFLICT, detail)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                logger.exception("bot=%s polling crashed", self.name)
                _reset_if_healthy(backoff, self.status, served_at, self.spec.healthy_period)
                self._set_status(
                    BotStatus.BACKING_OFF,
                    f"{type(error).__name__}: {error}; restarting in {backoff.next_delay:.0f}s",
                )
            await backoff.asleep()

    async def _serve(self) -> None:
        if self.spec.polling:
            await self._poll()
            return
        if self.spec.webhook is not None:
            await self.spec.webhook.open(self)
        self._set_status(BotStatus.RUNNING, "webhook")
        await asyncio.get_running_loop().create_future()  # until stop() cancels the task

    # polling

    async def _poll(self) -> None:
        allowed_updates = self.allowed_updates
        failures = Backoff(self.spec.retry_backoff)
        webhook_deleted = False
        while not self._stopping:
            request = GetUpdates(
                offset=self.offsets.offset, timeout=POLLING_TIMEOUT, allowed_updates=allowed_updates
            )
            try:
                updates = await self._get_updates(request)
            except TelegramConflictError as error:
                # Deleted only when found, not at every start: one call less per bot.
                if webhook_deleted or WEBHOOK_IS_SET not in error.message:
                    raise
                logger.info("bot=%s had a webhook set; deleting it to poll", self.name)
                await self.bot.delete_webhook(drop_pending_updates=False)
                webhook_deleted = True
                continue
            except (TelegramNetworkError, TelegramServerError) as error:
                self._set_status(BotStatus.BACKING_OFF, f"getUpdates failed: {error}")
                await failures.asleep()
                continue
            except TelegramRetryAfter as error:
                await asyncio.sleep(error.retry_after)
                continue
            failures.reset()
            self._set_status(BotStatus.RUNNING, "polling")
            fresh = [update for update in updates if not self.offsets.known(update.update_id)]
            for update in fresh:
                self.accept(update)
            if updates and not fresh:
                # Only updates still being handled came back: wait instead of spinning.
                await self.offsets.wait_for_progress(REPOLL_WHILE_BUSY)

    async def _get_updates(self, request: GetUpdates) -> list[Update]:
        """One long poll; until the bot runs, it runs once Telegram accepted the poll.

        No ``getMe`` first: a revoked token (401) and a second poller or a
        webhook (409) are answered at once, so a poll still open after
        :data:`ACCEPTED_AFTER` proves what ``getMe`` would, one call per bot sooner.
        """
        call = self.bot(request, request_timeout=POLLING_TIMEOUT + 15)
        if self.status == BotStatus.RUNNING:
            return await call
        accepted = asyncio.get_running_loop().call_later(
            ACCEPTED_AFTER, self._set_status, BotStatus.RUNNING, "polling"
        )
        try:
            return await call
        finally:
            accepted.cancel()

    def accept(self, update: Update, on_done: Callable[[int], None] | None = None) -> None:
        """Queue ``update`` for handling in order with the other updates of its FSM key.

        ``on_done`` is called with the update id once the update is finished
        (handled, or its handler failed for good), not when it is left for
        redelivery at shutdown.
        """
        self.counters.received += 1
        self.offsets.start(update.update_id)
        key = ordering_key(update, self.spec.fsm_strategy)
        self.executor.submit(key, lambda: self._handle(update, on_done))

    async def _confirm_offset(self) -> None:
        offset = self.offsets.offset
        if offset is None or not self.spec.polling or self.status == BotStatus.UNAUTHORIZED:
            return
        try:
            await self.bot(GetUpdates(offset=offset, limit=1, timeout=0), request_timeout=10)
        except Exception as error:  # confirming is an optimisation: unconfirmed come again
            logger.warning("bot=%s could not confirm offset %s: %s", self.name, offset, error)

    # handling

    async def _handle(self, update: Update, on_done: Callable[[int], None] | None) -> None:
        retry = Backoff(self.spec.retry_backoff)
        started = time.perf_counter()
        try:
            while True:
                try:
                    await self.dispatcher.feed_update(self.bot, update)
                    self.counters.handled += 1
                    break
                except TRANSIENT_ERRORS as error:
                    if self._stopping:
                        logger.warning(
                            "bot=%s update=%s not handled before shutdown (%s); "
                            "left for redelivery",
                            self.name,
                            update.update_id,
                            type(error).__name__,
                        )
                        return
                    self.counters.retries += 1
                    delay = (
                        error.retry_after
                        if isinstance(error, TelegramRetryAfter)
                        else retry.next_delay
                    )
                    logger.warning(
                        "bot=%s update=%s failed with %s: %s; retrying in %.1fs",
                        self.name,
                        update.update_id,
                        type(error).__name__,
                        error,
                        delay,
                    )
                    if isinstance(error, TelegramRetryAfter):
                        await asyncio.sleep(delay)
                    else:
                        await retry.asleep()
                except (Exception, OperationFailure):
                    self.counters.errors += 1
                    logger.exception(
                        "bot=%s update=%s handler failed; update confirmed",
                        self.name,
                        update.update_id,
                    )
                    break
        finally:
            elapsed = time.perf_counter() - started
            self.counters.handling_seconds += elapsed
            if self.spec.observe_handling is not None:
                self.spec.observe_handling(elapsed)
        self.offsets.finish(update.update_id)
        if on_done is not None:
            on_done(update.update_id)


def _reset_if_healthy(
    backoff: Backoff, status: BotStatus, served_at: float, healthy_period: float
) -> None:
    """Restart at the shortest delay a bot that ran for ``healthy_period`` before failing."""
    if status == BotStatus.RUNNING and time.monotonic() - served_at >= healthy_period:
        backoff.reset()


_HANDLING = BotRunner._handle.__code__


def handling_runner(frame: FrameType) -> BotRunner | None:
    """The runner whose update ``frame`` is handling, when ``frame`` is the frame marker.

    Every update is handled inside one runner frame that stays on the stack from
    the start of its handling to its end, handler and retries included; the
    event-loop watchdog walks a stack outwards until this says which bot it is in.
    """
    if frame.f_code is not _HANDLING:
        return None
    runner = frame.f_locals.get("self")
    return runner if isinstance(runner, BotRunner) else None


def _detach_routers(dispatcher: Dispatcher) -> None:
    """Let a restarted bot include the same Router objects in its new Dispatcher.

    aiogram offers no public way to detach a router, and refuses to attach one
    that has a parent, so the link is cut here, where the old Dispatcher is
    being discarded.
    """
    for router in dispatcher.sub_routers:
        router._parent_router = None
    dispatcher.sub_routers.clear()
