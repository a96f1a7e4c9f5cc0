"""Handling updates in order per FSM key, in parallel across keys, with a cap.

Shared by polling and webhook delivery: the runner hands every accepted update
to a :class:`KeyedExecutor`, and polling uses an :class:`OffsetTracker` to
confirm an update to Telegram only once it and every update before it finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable

from aiogram.dispatcher.middlewares.user_context import UserContextMiddleware
from aiogram.fsm.strategy import FSMStrategy, apply_strategy
from aiogram.types import Update

OrderingKey = Hashable
logger = logging.getLogger(__name__)
#: Seconds without a new update after which a lower update id is a new sequence, not a
#: redelivery (redeliveries come back within a poll, and Telegram restarts ids after weeks).
NEW_SEQUENCE_AFTER = 3600.0


def ordering_key(update: Update, strategy: FSMStrategy) -> OrderingKey:
    """The FSM key an update belongs to, as aiogram's FSM middleware resolves it.

    Updates without a chat or user (polls, for instance) get a key of their own,
    so they run in parallel with everything else.
    """
    context = UserContextMiddleware.resolve_event_context(update)
    chat_id = context.chat.id if context.chat else None
    user_id = context.user.id if context.user else None
    if chat_id is None:
        chat_id = user_id
    elif user_id is None and strategy in {FSMStrategy.CHAT, FSMStrategy.CHAT_TOPIC}:
        user_id = chat_id
    if chat_id is None or user_id is None:
        return ("update", update.update_id)
    return (
        *apply_strategy(strategy, chat_id=chat_id, user_id=user_id, thread_id=context.thread_id),
        context.business_connection_id,
    )


class KeyedExecutor:
    """Run jobs one after another per key, different keys concurrently, at most ``limit`` at once.

    A flooded key queues behind itself and holds at most one slot, so one busy
    chat cannot starve the others, and the cap keeps one busy bot from flooding
    the event loop shared with every other bot.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._slots = asyncio.Semaphore(limit)
        self._queues: dict[OrderingKey, deque[Callable[[], Awaitable[None]]]] = {}
        self._workers: set[asyncio.Task[None]] = set()
        #: Made by the first :meth:`join` that has to wait (an Event per idle bot adds up).
        self._idle: asyncio.Event | None = None

    @property
    def pending(self) -> int:
        """Jobs queued or running."""
        return sum(len(queue) for queue in self._queues.values())

    def submit(self, key: OrderingKey, job: Callable[[], Awaitable[None]]) -> None:
        """Queue ``job`` behind earlier jobs of ``key``; ``job`` handles its own errors."""
        queue = self._queues.get(key)
        if queue is not None:
            queue.append(job)
            return
        self._queues[key] = deque([job])
        if self._idle is not None:
            self._idle.clear()
        worker = asyncio.create_task(self._drain(key), name=f"botyard-key-{key}")
        self._workers.add(worker)
        worker.add_done_callback(self._workers.discard)

    async def _drain(self, key: OrderingKey) -> None:
        queue = self._queues[key]
        try:
            while queue:
                async with self._slots:
                    try:
                        await queue[0]()
                    except Exception:
                        logger.exception("update job for key %s failed", key)
                queue.popleft()
        finally:
            self._queues.pop(key, None)
            if not self._queues and self._idle is not None:
                self._idle.set()

    async def join(self, timeout: float | None = None) -> bool:
        """Wait until every queued job finished; ``False`` if ``timeout`` passed first."""
        if not self._queues:
            return True
        if self._idle is None:
            self._idle = asyncio.Event()
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def cancel(self) -> None:
        """Cancel whatever still runs (after a bounded :meth:`join` at shutdown)."""
        workers = list(self._workers)
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        self._queues.clear()
        if self._idle is not None:
            self._idle.set()


class OffsetTracker:
    """Which update ids are unfinished, and so which offset is safe to confirm.

    Telegram forgets every update below the ``offset`` of a ``getUpdates`` call.
    Confirming only below the oldest unfinished update makes polling
    at-least-once: a crash mid-handling leaves the update with Telegram, and it
    is delivered again after the restart.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._unfinished: set[int] = set()
        self._heap: list[int] = []
        self._highest: int | None = None
        self._progress: asyncio.Event | None = None  # made when first waited for
        self._clock = clock
        self._last_start = clock()

    def known(self, update_id: int) -> bool:
        """Seen in this process already (update ids only grow, and all are started in order).

        Telegram may restart a bot's ids at a lower random number after a long
        time without updates. A lower id after :data:`NEW_SEQUENCE_AFTER`
        without a new update, with nothing unfinished (everything seen was
        confirmed, so Telegram cannot send it again), starts a new sequence.
        """
        if self._highest is None or update_id > self._highest:
            return False
        if not self._unfinished and self._clock() - self._last_start >= NEW_SEQUENCE_AFTER:
            logger.info(
                "update id %d after %d and a quiet period: a new sequence", update_id, self._highest
            )
            self._highest = None
            return False
        return True

    def start(self, update_id: int) -> None:
        self._unfinished.add(update_id)
        heapq.heappush(self._heap, update_id)
        self._last_start = self._clock()
        if self._highest is None or update_id > self._highest:
            self._highest = update_id

    def finish(self, update_id: int) -> None:
        """The update is done, or kept safe elsewhere (journaled): it may be confirmed."""
        self._unfinished.discard(update_id)
        moved = False
        while self._heap and self._heap[0] not in self._unfinished:
            heapq.heappop(self._heap)
            moved = True
        if moved and self._progress is not None:
            self._progress.set()

    @property
    def unfinished(self) -> int:
        return len(self._unfinished)

    @property
    def offset(self) -> int | None:
        """The ``getUpdates`` offset that confirms exactly the finished prefix."""
        if self._heap:
            return self._heap[0]
        return None if self._highest is None else self._highest + 1

    async def wait_for_progress(self, timeout: float) -> None:
        """Sleep until the offset moves (the oldest unfinished update finished), or ``timeout``."""
        if self._progress is None:
            self._progress = asyncio.Event()
        self._progress.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._progress.wait()
