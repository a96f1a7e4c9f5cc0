"""How the emulator tells waiters and live UIs that something happened.

Two audiences: coroutines blocked until a condition holds (long polls, webhook
delivery, ``wait_for_reply``) only need a wake-up and re-check the state
themselves (:class:`Signal`); live UIs want the stream of what happened
(:class:`Subscription`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

EventKind = Literal[
    "message_sent", "message_edited", "update_queued", "update_delivered", "callback_answered"
]


class Signal:
    """Wakes every waiter at once; waiters re-check their own condition, so none is lost.

    ``notify`` is synchronous so state changes made in plain functions can wake
    waiters; it must be called on the loop the waiters run on.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        """Wake everyone waiting now; later waiters wait for the next notify."""
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float | None) -> None:
        """Return on the next notify, or after ``timeout`` seconds (``None``: no limit)."""
        event = self._event
        if timeout is None:
            await event.wait()
            return
        if timeout > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await event.wait()


@dataclass(frozen=True)
class EmulatorEvent:
    """Something that happened on one bot; names the bot by id and username, never by token.

    ``payload`` is the message (``message_sent``, ``message_edited``), the update
    (``update_queued``), ``{"via": "getUpdates" | "webhook", "update": ...}``
    (``update_delivered``) or ``{"callback_query_id": ..., "answer": ...}``
    (``callback_answered``).
    """

    kind: EventKind
    bot_id: int
    bot_username: str
    payload: dict[str, Any]
    at: float = field(default_factory=time.time)


class Subscription:
    """Events published since subscribing, read with ``async for`` or :meth:`get`.

    Bounded: a reader that stalls loses the oldest events (counted in
    ``dropped``) instead of growing memory without limit. Iteration ends once
    the subscription is closed, by :meth:`close` or when the emulator stops.
    """

    def __init__(self, hub: EventHub, maxsize: int) -> None:
        self._hub = hub
        self._queue: asyncio.Queue[EmulatorEvent | None] = asyncio.Queue(maxsize)
        self.closed = False
        self.dropped = 0

    def put(self, item: EmulatorEvent | None) -> None:
        """Queue an event (``None`` marks the end), dropping the oldest when full."""
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(item)

    async def get(self) -> EmulatorEvent:
        """The next event; ``StopAsyncIteration`` once closed and drained."""
        if self.closed and self._queue.empty():
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is None:
            raise StopAsyncIteration
        return item

    def close(self) -> None:
        """Stop receiving events; a reader waiting in ``get`` sees the end."""
        if not self.closed:
            self.closed = True
            self._hub.unsubscribe(self)
            self.put(None)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> EmulatorEvent:
        return await self.get()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class EventHub:
    """Fans every published event out to the open subscriptions."""

    def __init__(self) -> None:
        self._subscriptions: set[Subscription] = set()

    def subscribe(self, maxsize: int = 1000) -> Subscription:
        """A new subscription receiving events from now on."""
        subscription = Subscription(self, maxsize)
        self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Forget a subscription (called by :meth:`Subscription.close`)."""
        self._subscriptions.discard(subscription)

    @property
    def active(self) -> bool:
        """Whether anyone listens; events are only built when someone does."""
        return bool(self._subscriptions)

    def publish(self, event: EmulatorEvent) -> None:
        """Hand ``event`` to every subscription."""
        for subscription in self._subscriptions:
            subscription.put(event)

    def close_all(self) -> None:
        """End every subscription, so streaming readers finish when the emulator stops."""
        for subscription in list(self._subscriptions):
            subscription.close()
