"""Webhook delivery: push each bot's pending updates to its URL, as Telegram does.

An update leaves the queue only after a 2xx answer; failures and timeouts are
retried with exponential backoff. At most ``max_connections`` updates of a bot
are in flight at once, so with ``max_connections=1`` updates arrive strictly
in order. Every attempt is recorded on the bot for tests to inspect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp

from botyard.emulator.params import Params, read_webhook_reply
from botyard.emulator.state import JSON, DeliveryAttempt, EmulatedBot

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"

logger = logging.getLogger(__name__)

ReplyHandler = Callable[[EmulatedBot, str, Params], Awaitable[None]]
"""Runs a method call that a webhook answered with, as if the bot had made it."""


@dataclass(frozen=True)
class DeliverySettings:
    """Retry timing of webhook delivery; tests shrink these to stay fast."""

    retry_delay: float = 1.0
    max_retry_delay: float = 30.0
    timeout: float = 10.0


class _BotDelivery:
    """Delivers one bot's updates to the webhook that was set when it was created."""

    def __init__(
        self,
        bot: EmulatedBot,
        session: aiohttp.ClientSession,
        settings: DeliverySettings,
        on_reply: ReplyHandler,
    ) -> None:
        self._bot = bot
        self._webhook = bot.webhook
        self._session = session
        self._settings = settings
        self._on_reply = on_reply
        self._in_flight: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._spawn(self._run())

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cancel(self) -> list[asyncio.Task[None]]:
        """Stop delivering; returns the cancelled tasks so a caller can wait for them."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        return tasks

    async def _run(self) -> None:
        while True:
            update = None
            if len(self._in_flight) < self._webhook.max_connections:
                update = next(
                    (u for u in self._bot.pending if u["update_id"] not in self._in_flight), None
                )
            if update is None:
                await self._bot.changed.wait(None)
                continue
            self._in_flight.add(update["update_id"])
            self._spawn(self._deliver(update))

    async def _deliver(self, update: JSON) -> None:
        delay = self._settings.retry_delay
        try:
            while not await self._post(update):
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._settings.max_retry_delay)
            self._bot.remove_update(update["update_id"])
            self._bot.emit("update_delivered", {"via": "webhook", "update": update})
        finally:
            self._in_flight.discard(update["update_id"])
            self._bot.changed.notify()

    async def _post(self, update: JSON) -> bool:
        """One attempt; True on a 2xx answer."""
        headers = {"Content-Type": "application/json"}
        if self._webhook.secret_token is not None:
            headers[SECRET_HEADER] = self._webhook.secret_token
        status: int | None = None
        error: str | None
        reply: tuple[str, Params] | None = None
        try:
            async with self._session.post(
                self._webhook.url,
                data=json.dumps(update),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self._settings.timeout),
            ) as response:
                status = response.status
                error = f"Wrong response from the webhook: {status} {response.reason}"
                if 200 <= status < 300:
                    error = None
                    with contextlib.suppress(ValueError, aiohttp.ClientError):
                        reply = await read_webhook_reply(response)
        except TimeoutError:
            error = "Read timeout expired"
        except aiohttp.ClientError as exc:
            error = f"Connection failed: {type(exc).__name__}: {exc}"
        self._bot.deliveries.append(
            DeliveryAttempt(update["update_id"], self._webhook.url, status, error, time.time())
        )
        if error is not None:
            self._webhook.last_error_date = int(time.time())
            self._webhook.last_error_message = error
            logger.info(
                "webhook of %s: update %s not delivered: %s",
                self._bot.label,
                update["update_id"],
                error,
            )
            return False
        if reply is not None:
            await self._on_reply(self._bot, *reply)
        return True


class WebhookDelivery:
    """Runs delivery for every bot that has a webhook; one HTTP client for all of them."""

    def __init__(self, settings: DeliverySettings, on_reply: ReplyHandler) -> None:
        self._settings = settings
        self._on_reply = on_reply
        self._session: aiohttp.ClientSession | None = None
        self._deliveries: dict[int, _BotDelivery] = {}
        self._cancelled: list[asyncio.Task[None]] = []

    async def open(self) -> None:
        """Create the HTTP client; deliveries are limited per bot, not overall."""
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    def restart(self, bot: EmulatedBot) -> None:
        """Follow the bot's current webhook: stop the old delivery, start one if a URL is set."""
        self._cancelled = [task for task in self._cancelled if not task.done()]
        old = self._deliveries.pop(bot.id, None)
        if old is not None:
            self._cancelled.extend(old.cancel())
        if bot.webhook.url and not bot.revoked and self._session is not None:
            self._deliveries[bot.id] = _BotDelivery(
                bot, self._session, self._settings, self._on_reply
            )
        bot.changed.notify()

    async def close(self) -> None:
        """Stop every delivery, wait for them to end and close the HTTP client."""
        for delivery in self._deliveries.values():
            self._cancelled.extend(delivery.cancel())
        self._deliveries.clear()
        await asyncio.gather(*self._cancelled, return_exceptions=True)
        self._cancelled.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None
