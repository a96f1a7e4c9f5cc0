"""One bot's life: its Dispatcher, its polling loop, and how its updates are handled.

A runner never lets its bot's trouble reach another bot: a revoked token stops
this runner alone, a crash restarts it with backoff, and a slow handler only
holds one of this bot's own concurrency slots.

Nor does one conversation's trouble reach the bot's other conversations.
Polling confirms an update to Telegram only once it is safe: handled, or
journaled (see :mod:`botyard.webhook.journal`). An update that holds the offset
back for :data:`PARK_AFTER` (a hanging handler, a chat under a long flood wait,
a conversation queued behind one), or that keeps a full ``getUpdates`` answer
from bringing anything new, is journaled, all of one poll in one round trip, and
the offset moves past it; it is handled from memory as before, and after a
crash from the journal. An update is handled with the bot's FSM writes buffered
(:class:`~botyard.storage.scope.UpdateScope`): on success they are stored, and
only storing them is retried when MongoDB is unreachable (the reply is not sent
again); when the update is handled again instead, they are discarded first, so
each attempt starts from the state before the update. Attempts are bounded by
``handling_timeout`` and ``update_retries``; an update given up is logged with
its id and counted.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Protocol

from aiogram import Bot, Dispatcher
from aiogram.dispatcher.middlewares.user_context import UserContextMiddleware
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
from pydantic import ValidationError
from pymongo.errors import ConnectionFailure, PyMongoError, ServerSelectionTimeoutError

from botyard.logs import LogContext, log_context
from botyard.runtime.filters import resolve_magic_filters_inline
from botyard.runtime.http_sessions import (
    MalformedUpdate,
    PlatformSession,
    describe_validation_error,
)
from botyard.runtime.log_context import LogContextMiddleware
from botyard.runtime.ordering import KeyedExecutor, OffsetTracker, ordering_key
from botyard.runtime.routers import BotRouters, RouterBuildError
from botyard.storage import BeanieStorage
from botyard.storage.scope import UpdateScope
from botyard.webhook.journal import JournalEntry, UpdateJournal

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

#: The label MongoDB puts on a write that failed in an election or failover.
RETRYABLE_WRITE = "RetryableWriteError"


def is_transient(error: BaseException) -> bool:
    """Whether handling (or storing) again can succeed where this error failed."""
    if isinstance(error, TRANSIENT_ERRORS):
        return True
    if not isinstance(error, PyMongoError):
        return False
    if error.timeout or error.has_error_label(RETRYABLE_WRITE):
        return True  # timeoutMS passed, or a write refused in an election
    # A bulk write keeps the labels of its write concern errors inside its details.
    details = getattr(error, "details", None) or {}
    concern_errors = details.get("writeConcernErrors") or []
    return any(RETRYABLE_WRITE in (problem.get("errorLabels") or []) for problem in concern_errors)


RESTART_BACKOFF = BackoffConfig(min_delay=1.0, max_delay=60.0, factor=2.0, jitter=0.1)
#: A bot that ran this many seconds before failing was healthy: it restarts at the minimum delay.
HEALTHY_PERIOD = 60.0
RETRY_BACKOFF = BackoffConfig(min_delay=0.5, max_delay=30.0, factor=2.0, jitter=0.1)
POLLING_TIMEOUT = 30
#: A long poll not rejected within this many seconds was accepted (errors come at once).
ACCEPTED_AFTER = 1.0
#: In Telegram's 409 answer to getUpdates while the bot has a webhook.
WEBHOOK_IS_SET = "webhook is active"
#: Poll again after this long even if the offset did not move, to pick up new chats.
REPOLL_WHILE_BUSY = 1.0
#: Most updates one ``getUpdates`` answer holds (Telegram's limit and default).
MAX_UPDATES_PER_POLL = 100
#: An update holding the offset back this long, while it did not move, is journaled.
PARK_AFTER = 2.0
#: With replicas, a long poll ends at least this many seconds before the claim lapses.
CLAIM_MARGIN = 1.0


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
    #: Updates abandoned after ``update_retries`` or ``handling_timeout`` (logged, confirmed).
    given_up: int = 0
    #: Updates that do not parse as an aiogram ``Update`` (logged by id, confirmed).
    malformed: int = 0
    #: Polled updates journaled so the offset could move past them while they waited.
    journaled: int = 0
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
    #: Longest one attempt at an update may take, in seconds (``None``: no limit).
    handling_timeout: float | None = 120.0
    #: How often an update (or storing its writes) is tried again after a transient error.
    update_retries: int = 8
    #: Where updates wait safely: polled ones that hold the offset back, and for
    #: webhook bots every accepted one. ``None``: polled updates are never journaled.
    journal: UpdateJournal | None = None
    #: With replicas: seconds this process may still poll the bot (see botyard.cluster).
    claim_left: Callable[[], float] | None = None


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
        #: Polled updates holding the offset back, oldest first, with when each was accepted.
        self._waiting: dict[int, tuple[float, Update]] = {}
        #: Polled updates still being handled that the journal keeps safe.
        self._parked: set[int] = set()
        #: Polled updates whose journaling failed, but may have been stored all the same
        #: (its answer lost): their entries are deleted once they are handled.
        self._maybe_journaled: set[int] = set()
        #: When the offset last moved, something began to hold it back, or journaling failed.
        self._offset_moved_at = time.monotonic()
        #: Ids handled from the journal, which Telegram may still offer (never twice).
        self._from_journal: set[int] = set()
        self._resumed = False
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        #: The replica's claim lapsed: never poll or confirm again (another replica may).
        self._claim_lapsed = False
        #: Some update was left for redelivery while stopping (a transient error).
        self._left_unfinished = False

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
            resolve_magic_filters_inline(dispatcher)
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
        if not drained or self._left_unfinished:
            await self._hand_back_journaled()
        await self._confirm_offset()
        dispatcher, self._dispatcher = self._dispatcher, None
        if dispatcher is not None:
            await dispatcher.emit_shutdown(bot=self.bot, dispatcher=dispatcher)
            _detach_routers(dispatcher)
        if self.status not in {BotStatus.UNAUTHORIZED}:
            self._set_status(BotStatus.STOPPED)
        return drained

    async def _hand_back_journaled(self) -> None:
        """The journaled updates left unfinished go to whichever process runs the bot next:
        this one lives on, so no other would claim them while it is alive."""
        journal = self.spec.journal
        if journal is None:
            return
        try:
            await journal.hand_back(self.name)
        except PyMongoError as error:
            logger.warning(
                "bot=%s unfinished journaled updates stay with this process (%s); "
                "they are handled when the bot starts here again, or after it exits",
                self.name,
                type(error).__name__,
            )

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
        started = not self.spec.routers.lifecycle_hooks
        while not self._stopping:
            served_at = time.monotonic()
            try:
                if not started:  # a startup handler that raised is a crash: tried again
                    await self.dispatcher.emit_startup(bot=self.bot, dispatcher=self.dispatcher)
                    started = True
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
        await self._resume_journaled()
        while not self._stopping:
            await self._park_overdue()
            timeout = await self._poll_timeout()
            if timeout is None:
                return
            request = GetUpdates(
                offset=self.offsets.offset, timeout=timeout, allowed_updates=allowed_updates
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
            if self._claim_lost():
                return  # the updates are another replica's now: neither handled nor confirmed
            self._set_status(BotStatus.RUNNING, "polling")
            if self._from_journal and updates:  # Telegram no longer offers what lies below
                self._from_journal = {i for i in self._from_journal if i >= updates[0].update_id}
            fresh = [update for update in updates if not self.offsets.known(update.update_id)]
            for update in fresh:
                self._take(update)
            if not self._waiting:
                continue  # nothing holds the offset back: the next poll waits at Telegram
            full = not fresh and len(updates) >= MAX_UPDATES_PER_POLL
            # A full answer of updates already here: nothing new comes until some are safe.
            if full and await self._park_overdue(everything=True):
                continue
            # Telegram answers at once with the updates still held back: poll again
            # when the offset moves, when one is due to be journaled, or, while there
            # are free slots, after a while to pick up new chats.
            await self.offsets.wait_for_progress(self._repoll_delay())

    async def _poll_timeout(self) -> int | None:
        """The long poll's timeout; with replicas, short enough to end before the claim.

        ``None`` once the claim lapsed: the replica stops this runner, and only
        starts the bot again after taking its claim anew.
        """
        if self.spec.claim_left is None:
            return POLLING_TIMEOUT
        while not self._claim_lost():
            left = self.spec.claim_left() - CLAIM_MARGIN
            if left >= 1:
                return min(POLLING_TIMEOUT, int(left))
            await asyncio.sleep(0.1)  # a heartbeat is due; it extends the claim
        self._set_status(BotStatus.BACKING_OFF, "this replica's claim lapsed; polling stopped")
        return None

    def _claim_lost(self) -> bool:
        if self.spec.claim_left is not None and self.spec.claim_left() <= 0:
            self._claim_lapsed = True
        return self._claim_lapsed

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

    def _take(self, update: Update) -> None:
        """Handle an update fresh from ``getUpdates``, or confirm it if there is nothing to do."""
        update_id = update.update_id
        self.offsets.start(update_id)
        if isinstance(update, MalformedUpdate):
            self.counters.malformed += 1
            logger.warning(
                "bot=%s update=%s skipped and confirmed: it does not parse as an aiogram "
                "Update (%s)",
                self.name,
                update_id,
                update.problem,
            )
            self.offsets.finish(update_id)
        elif update_id in self._from_journal:
            self._from_journal.discard(update_id)  # handled from the journal already
            self.offsets.finish(update_id)
        else:
            now = time.monotonic()
            if not self._waiting:
                self._offset_moved_at = now
            self._waiting[update_id] = (now, update)
            self._submit(update, self._finished_polled)

    def _finished_polled(self, update_id: int) -> None:
        journaled = update_id in self._parked or update_id in self._maybe_journaled
        if update_id in self._parked:
            self._parked.discard(update_id)
        else:
            self._release(update_id)
            self._maybe_journaled.discard(update_id)
        if journaled:
            assert self.spec.journal is not None
            self.spec.journal.finished(self.name, update_id)

    def _release(self, update_id: int) -> None:
        """Let the offset move past a polled update: it finished, or the journal keeps it."""
        self._waiting.pop(update_id, None)
        before = self.offsets.offset
        self.offsets.finish(update_id)
        if self.offsets.offset != before:
            self._offset_moved_at = time.monotonic()

    def _repoll_delay(self) -> float:
        delays = [REPOLL_WHILE_BUSY]
        if self.spec.journal is not None:
            due = PARK_AFTER - (time.monotonic() - self._offset_moved_at)
            if self.executor.pending >= self.spec.max_concurrent_updates:
                delays = [due]  # no slot for anything new: poll when something can move
            else:
                delays.append(due)
        return max(0.0, min(delays))

    async def _park_overdue(self, *, everything: bool = False) -> bool:
        """Journal the updates that held the offset back too long, and let it move past them.

        Due are those waiting for :data:`PARK_AFTER` while the offset did not
        move, or with ``everything`` all that hold it back. If the journal
        cannot be written, nothing moves: they stay unconfirmed with Telegram,
        and the next try is :data:`PARK_AFTER` later. ``True`` if some were journaled.
        """
        journal = self.spec.journal
        if journal is None or not self._waiting:
            return False
        now = time.monotonic()
        if not everything and now - self._offset_moved_at < PARK_AFTER:
            return False
        due = {
            update_id: update
            for update_id, (since, update) in self._waiting.items()
            if everything or now - since >= PARK_AFTER
        }
        documents = [(update_id, self._document(update)) for update_id, update in due.items()]
        try:
            await journal.park(self.name, documents)
        except BaseException as error:
            for update_id in due:
                if update_id in self._waiting:
                    self._maybe_journaled.add(update_id)
                else:  # finished while it was being journaled
                    journal.finished(self.name, update_id)
            if not isinstance(error, PyMongoError):
                raise
            self._offset_moved_at = time.monotonic()  # polling goes on at its busy pace
            logger.warning(
                "bot=%s could not journal %d waiting update(s) (%s); they stay unconfirmed",
                self.name,
                len(due),
                type(error).__name__,
            )
            return False
        for update_id in due:
            self._maybe_journaled.discard(update_id)
            if update_id not in self._waiting:  # finished while it was being journaled
                journal.finished(self.name, update_id)
                continue
            self._release(update_id)
            self._parked.add(update_id)
        self.counters.journaled += len(due)
        logger.info(
            "bot=%s journaled %d update(s) still being handled; polling goes on past them",
            self.name,
            len(due),
        )
        return True

    def _document(self, update: Update) -> dict[str, Any]:
        """The update as the Bot API sent it, for the journal: the JSON the session kept,
        else rebuilt from the parsed update."""
        session = self.bot.session
        if isinstance(session, PlatformSession):
            sent = session.sent_as(self.bot, update.update_id)
            if sent is not None:
                return sent
        return update.model_dump(mode="json", exclude_unset=True, by_alias=True)

    async def _resume_journaled(self) -> None:
        """Once per runner, before the first poll: handle what an earlier run journaled."""
        journal = self.spec.journal
        if self._resumed or journal is None:
            return
        entries = await journal.claim_starting(self.name, own=True)
        for entry in entries:
            self.accept_journaled(entry)
        self._resumed = True
        if entries:
            logger.info(
                "bot=%s handling %d journaled update(s) an earlier run did not finish",
                self.name,
                len(entries),
            )

    # accepting

    def accept(self, update: Update, on_done: Callable[[int], None]) -> None:
        """Queue ``update``, which is kept safe elsewhere, in order with its FSM key's others.

        ``on_done`` is called with the update id once the update is finished
        (handled, failed for good, or given up), not when it is left for
        redelivery at shutdown.
        """
        self._submit(update, on_done)

    def accept_journaled(self, entry: JournalEntry) -> None:
        """Queue an update read back from the journal; it leaves the journal when finished.

        A runner stopping or stopped (a claim that ended after a reload stopped
        it) lets the update go instead: the next claim hands it to the bot's
        running runner.
        """
        journal = self.spec.journal
        if journal is None:
            raise RuntimeError(f"bot {self.name!r} has no journal")
        if self._stopping:
            journal.release(self.name, entry.update_id)
            return
        try:
            update = Update.model_validate(entry.update, context={"bot": self.bot})
        except ValidationError as error:  # never block the rest for one unreadable entry
            self.counters.malformed += 1
            logger.error(
                "bot=%s journaled update=%s dropped: it does not parse as an aiogram Update (%s)",
                self.name,
                entry.update_id,
                describe_validation_error(error),
            )
            journal.finished(self.name, entry.update_id)
            return
        if self.spec.polling:
            self._from_journal.add(update.update_id)
        self._submit(update, lambda update_id: journal.finished(self.name, update_id))

    def _submit(self, update: Update, on_done: Callable[[int], None]) -> None:
        self.counters.received += 1
        key = ordering_key(update, self.spec.fsm_strategy)
        self.executor.submit(key, lambda: self._handle(update, on_done))

    async def _confirm_offset(self) -> None:
        offset = self.offsets.offset
        if offset is None or not self.spec.polling or self.status == BotStatus.UNAUTHORIZED:
            return
        if self._claim_lost():
            return
        try:
            await self.bot(GetUpdates(offset=offset, limit=1, timeout=0), request_timeout=10)
        except Exception as error:  # confirming is an optimisation: unconfirmed come again
            logger.warning("bot=%s could not confirm offset %s: %s", self.name, offset, error)

    # handling

    async def _handle(self, update: Update, on_done: Callable[[int], None]) -> None:
        started = time.perf_counter()
        try:
            finished = await self._attempts(update)
        finally:
            elapsed = time.perf_counter() - started
            self.counters.handling_seconds += elapsed
            if self.spec.observe_handling is not None:
                self.spec.observe_handling(elapsed)
        if finished:
            on_done(update.update_id)
        else:
            self._left_unfinished = True

    async def _attempts(self, update: Update) -> bool:
        """Handle ``update`` until done; ``False``: left unfinished for redelivery at shutdown.

        A transient failure discards the attempt's FSM writes and tries again
        (at most ``update_retries`` times); a handler raising anything else
        keeps what it wrote so far, as aiogram's storages do, and is done; a
        handler over ``handling_timeout`` is cancelled, its writes discarded,
        and the update given up.
        """
        retry = Backoff(self.spec.retry_backoff)
        for attempt in itertools.count():
            scope = UpdateScope()
            try:
                await self._attempt(update, scope)
            except _HandlingTimeout as timeout:
                scope.discard()
                self._give_up(
                    update, f"still running after handling_timeout ({timeout.seconds:g}s)"
                )
                return True
            except Exception as error:
                if not is_transient(error):
                    self.counters.errors += 1
                    logger.exception(
                        "bot=%s update=%s handler failed; its FSM writes so far are kept, "
                        "update confirmed",
                        self.name,
                        update.update_id,
                        extra=_event("handler_failed", self.name, update),
                    )
                    await self._store(update, scope, counted=True)
                    return True
                scope.discard()
                if self._stopping:
                    logger.warning(
                        "bot=%s update=%s not handled before shutdown (%s); left for redelivery",
                        self.name,
                        update.update_id,
                        type(error).__name__,
                    )
                    return False
                if attempt >= self.spec.update_retries:
                    self._give_up(
                        update,
                        f"failed {attempt + 1} times, last with {type(error).__name__}: {error}",
                    )
                    return True
                self.counters.retries += 1
                delay = (
                    error.retry_after if isinstance(error, TelegramRetryAfter) else retry.next_delay
                )
                logger.warning(
                    "bot=%s update=%s failed with %s: %s; handling it again in %.1fs",
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
                continue
            if await self._store(update, scope):
                self.counters.handled += 1
            return True
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(self, update: Update, scope: UpdateScope) -> None:
        timeout = self.spec.handling_timeout
        try:
            async with asyncio.timeout(timeout) as deadline:
                with scope.buffering():
                    await self.dispatcher.feed_update(self.bot, update)
        except TimeoutError:
            if timeout is not None and deadline.expired():
                raise _HandlingTimeout(timeout) from None
            raise

    async def _store(self, update: Update, scope: UpdateScope, *, counted: bool = False) -> bool:
        """Store the update's FSM writes, retrying only the storing; ``False`` if they were lost.

        ``counted``: the update's handler failed, and is counted among the errors already.
        """
        retry = Backoff(self.spec.retry_backoff)
        for attempt in itertools.count():
            try:
                await scope.flush()
                return True
            except Exception as error:
                if not is_transient(error):
                    if not counted:
                        self.counters.errors += 1
                    logger.exception(
                        "bot=%s update=%s handled, but its FSM writes were refused; "
                        "update confirmed",
                        self.name,
                        update.update_id,
                    )
                    return False
                if attempt >= self.spec.update_retries:
                    self._give_up(
                        update,
                        f"handled, but its FSM writes could not be stored "
                        f"({type(error).__name__}: {error})",
                    )
                    return False
                self.counters.retries += 1
                logger.warning(
                    "bot=%s update=%s handled, but storing its FSM writes failed with %s; "
                    "storing them again in %.1fs (the handler is not run again)",
                    self.name,
                    update.update_id,
                    type(error).__name__,
                    retry.next_delay,
                )
                await retry.asleep()
        raise AssertionError("unreachable")  # pragma: no cover

    def _give_up(self, update: Update, reason: str) -> None:
        self.counters.given_up += 1
        logger.error(
            "bot=%s update=%s given up: %s; update confirmed",
            self.name,
            update.update_id,
            reason,
            extra=_event("update_given_up", self.name, update),
        )


class _HandlingTimeout(Exception):
    def __init__(self, seconds: float) -> None:
        super().__init__(f"handling took longer than {seconds:g}s")
        self.seconds = seconds


def _event(event: str, bot: str, update: Update) -> dict[str, Any]:
    """The ``extra`` fields of a record about an update: what happened, the bot, and the user
    (their private chat). Never the update: every handler, an error tracker's too, would
    read the user's words from it."""
    context = UserContextMiddleware.resolve_event_context(update)
    user = context.chat or context.user
    return {"event": event, "bot_name": bot, "user_id": user.id if user else None}


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
