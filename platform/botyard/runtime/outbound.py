"""Outbound Bot API calls: flood control per bot, and retries of the call, not the update.

One :class:`Outbound` is an aiogram request middleware on every shared session
(:mod:`botyard.runtime.http_sessions`); it finds the calling bot's
:class:`BotOutbound` by token and passes the calls of bots it does not know,
and every ``getUpdates`` (the poller retries those itself), straight through.

Flood control. Every call that sends to a chat (``send*`` but
``sendChatAction``, ``copyMessage(s)``, ``forwardMessage(s)``, ``editMessage*``)
waits for a slot in token buckets: the bot's, the chat's and, for a group (a
negative chat id or an ``@channel``), the group's. The buckets are GCRA: one
number per bucket, no timers; a send under the limits does not wait. Other
methods (``getMe``, ``answerCallbackQuery``, ``setWebhook``...) are never held.

Retries. A transient failure of one call (429, 5xx, a lost connection, a
timeout) is retried at that call: after ``retry_after`` for a 429, after an
exponential backoff otherwise, as long as the retry would start within
``retry_for`` seconds of the first attempt (an attempt under way is not cut:
the request timeout bounds it); then the handler gets the last error, and one
log line names the bot, the method and the chat. A 429 also pauses, for
``retry_after``, the chat the call went to (or the whole bot, for a call to no
chat): Telegram's answer does not say which limit was hit, and pausing the
whole bot for one busy group would hold every other chat back.

A lost connection is retried even though the request may have reached
Telegram: the Bot API has no idempotency key, so after a connection dropped
*after* Telegram processed a send, the retry sends the message a second time.
Not retrying would skip a step of the conversation instead, which is worse.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from aiogram import Bot
from aiogram.client.session.middlewares.base import (
    BaseRequestMiddleware,
    NextRequestMiddlewareType,
)
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramEntityTooLarge,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.methods import GetUpdates, Response, TelegramMethod
from aiogram.methods.base import TelegramType

from botyard.registry.models import BotConfig, rate_per_second

__all__ = [
    "BotOutbound",
    "CallMeter",
    "FloodControl",
    "Outbound",
    "OutboundPolicy",
    "OutboundStats",
]

logger = logging.getLogger("botyard.outbound")

#: Backoff between retries of a 5xx or a lost connection: 0.5 s doubling up to 8 s, +-10 %.
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 8.0
#: Chats looked at for eviction each time a new chat gets buckets (keeps memory bounded).
EVICTION_CHECKS = 2

_SEND_PREFIXES = ("send", "copyMessage", "forwardMessage", "editMessage")


def is_send(api_method: str) -> bool:
    """Whether a Bot API method sends (or edits) a message, so flood limits apply."""
    return api_method.startswith(_SEND_PREFIXES) and api_method != "sendChatAction"


#: Per method class: (is a send, has a ``chat_id`` field). A pydantic model answers
#: ``getattr`` of a field it lacks slowly (an AttributeError raised inside pydantic).
_KINDS: dict[type[TelegramMethod[Any]], tuple[bool, bool]] = {}


def _kind(method: TelegramMethod[Any]) -> tuple[bool, bool]:
    cls = type(method)
    kind = _KINDS.get(cls)
    if kind is None:
        kind = _KINDS[cls] = (is_send(method.__api_method__), "chat_id" in cls.model_fields)
    return kind


@dataclass(frozen=True)
class OutboundPolicy:
    """One bot's limits, in messages per second, and its retry window in seconds."""

    per_bot: float = 30.0
    per_chat: float = 1.0
    per_group: float = 20 / 60
    burst: int = 3
    retry_for: float = 30.0

    @classmethod
    def from_config(cls, config: BotConfig) -> OutboundPolicy:
        limits = config.flood_limits
        return cls(
            per_bot=rate_per_second(limits.per_bot),
            per_chat=rate_per_second(limits.per_chat),
            per_group=rate_per_second(limits.per_group),
            burst=limits.burst,
            retry_for=config.api_retry_for.total_seconds(),
        )


@dataclass
class OutboundStats:
    """What one bot's outbound calls met; read by the metrics when scraped."""

    sends_delayed: int = 0
    send_delay_seconds: float = 0.0
    too_many_requests: int = 0
    retries: int = 0
    given_up: int = 0


class _Chat:
    """One chat's buckets as GCRA: ``due`` is when its next send would be on schedule."""

    __slots__ = ("due", "group", "group_due", "paused_until")

    def __init__(self, group: bool) -> None:
        self.due = 0.0
        self.group = group
        self.group_due = 0.0
        self.paused_until = 0.0


ChatId = int | str


class FloodControl:
    """One bot's buckets: its own, and one per chat it sent to recently.

    Each bucket is one number (GCRA): a send fits when ``due - allowance`` is
    not in the future, and moves ``due`` one interval on. The arithmetic is
    written out inline: this runs for every message every bot sends.
    """

    def __init__(self, policy: OutboundPolicy) -> None:
        self._bot_interval = 1.0 / policy.per_bot
        self._bot_allowance = (policy.burst - 1) * self._bot_interval
        self._chat_interval = 1.0 / policy.per_chat
        self._chat_allowance = (policy.burst - 1) * self._chat_interval
        self._group_interval = 1.0 / policy.per_group
        self._group_allowance = (policy.burst - 1) * self._group_interval
        self._bot_due = 0.0
        self._chats: OrderedDict[ChatId, _Chat] = OrderedDict()
        self.paused_until = 0.0

    @property
    def tracked_chats(self) -> int:
        """Chats with buckets right now (idle ones are evicted as new chats come)."""
        return len(self._chats)

    def _chat(self, chat_id: ChatId, now: float) -> _Chat:
        chats = self._chats
        chat = chats.get(chat_id)
        if chat is not None:
            chats.move_to_end(chat_id)
            return chat
        for _ in range(min(EVICTION_CHECKS, len(chats))):
            oldest_id, oldest = next(iter(chats.items()))
            if oldest.due <= now and oldest.group_due <= now and oldest.paused_until <= now:
                del chats[oldest_id]  # fresh buckets would behave the same
            else:
                chats.move_to_end(oldest_id)
        chat = chats[chat_id] = _Chat(not isinstance(chat_id, int) or chat_id < 0)
        return chat

    def _chat_wait(self, chat: _Chat, now: float) -> float:
        wait = chat.due - self._chat_allowance - now
        if chat.paused_until - now > wait:
            wait = chat.paused_until - now
        if chat.group and chat.group_due - self._group_allowance - now > wait:
            wait = chat.group_due - self._group_allowance - now
        return wait

    def pause(self, chat_id: ChatId | None, seconds: float) -> None:
        """Hold every send to ``chat_id`` (``None``: of the bot) for ``seconds``."""
        now = time.monotonic()
        if chat_id is None:
            self.paused_until = max(self.paused_until, now + seconds)
        else:
            chat = self._chat(chat_id, now)
            chat.paused_until = max(chat.paused_until, now + seconds)

    def paused_for(self, chat_id: ChatId | None) -> float:
        """Seconds a send to ``chat_id`` must wait for a pause to end."""
        now = time.monotonic()
        paused = self.paused_until - now
        chat = self._chats.get(chat_id) if chat_id is not None else None
        return paused if chat is None else max(paused, chat.paused_until - now)

    async def acquire(self, chat_id: ChatId | None) -> float:
        """Wait until one send to ``chat_id`` fits every limit; the seconds waited.

        The chat's own limits (and pauses) are waited for first, without
        holding a slot of the bot's bucket, so a chat that must wait never
        delays the others; then the bot's next slot is taken, and the chat's
        buckets count the send at that slot.
        """
        waited = 0.0
        now = time.monotonic()
        chat = self._chat(chat_id, now) if chat_id is not None else None
        while self.paused_until > now or (chat is not None and self._chat_wait(chat, now) > 0):
            wait = self.paused_until - now
            if chat is not None:
                wait = max(wait, self._chat_wait(chat, now))
            await asyncio.sleep(wait)
            waited += wait
            now = time.monotonic()
            chat = self._chat(chat_id, now) if chat_id is not None else None  # may be evicted
        due = self._bot_due
        delay = due - self._bot_allowance - now
        if delay < 0:
            delay = 0.0
        self._bot_due = (due if due > now else now) + self._bot_interval
        if chat is not None:
            at = now + delay
            chat.due = (chat.due if chat.due > at else at) + self._chat_interval
            if chat.group:
                chat.group_due = (chat.group_due if chat.group_due > at else at) + (
                    self._group_interval
                )
        if delay > 0:
            await asyncio.sleep(delay)
        return waited + delay


def _backoff(attempt: int) -> float:
    return min(MAX_BACKOFF, FIRST_BACKOFF * 2.0**attempt) * random.uniform(0.9, 1.1)


class BotOutbound:
    """One bot's flood control, retries and counts."""

    def __init__(self, name: str, policy: OutboundPolicy) -> None:
        self.name = name
        self.policy = policy
        self.flood = FloodControl(policy)
        self.stats = OutboundStats()

    async def call(
        self,
        make_request: NextRequestMiddlewareType[TelegramType],
        bot: Bot,
        method: TelegramMethod[TelegramType],
    ) -> Response[TelegramType]:
        """Make the call, waiting for a slot if it sends, retrying it while that may help."""
        api_method = method.__api_method__
        sends, has_chat = _kind(method)
        chat_id: ChatId | None = method.chat_id if has_chat else None  # type: ignore[attr-defined]
        started: float | None = None
        attempt = 0
        while True:
            attempt += 1
            if sends:
                paused = self.flood.paused_for(chat_id)
                spent = 0.0 if started is None else time.monotonic() - started
                if paused > 0 and spent + paused > self.policy.retry_for:
                    raise self._give_up(
                        TelegramRetryAfter(
                            method=method,
                            message=f"Too Many Requests: retry after {paused:.0f}",
                            retry_after=max(1, round(paused)),
                        ),
                        api_method,
                        chat_id,
                        attempt - 1,
                        spent,
                    )
                delay = await self.flood.acquire(chat_id)
                if delay > 0:
                    self.stats.sends_delayed += 1
                    self.stats.send_delay_seconds += delay
            if started is None:
                started = time.monotonic()
            try:
                return await make_request(bot, method)
            except TelegramRetryAfter as error:
                self.stats.too_many_requests += 1
                self.flood.pause(chat_id, error.retry_after)
                failure: TelegramAPIError = error
                wait = float(error.retry_after)
            except TelegramEntityTooLarge:
                raise
            except (TelegramServerError, TelegramNetworkError) as error:
                failure = error
                wait = _backoff(attempt - 1)
            spent = time.monotonic() - started
            if spent + wait > self.policy.retry_for:
                raise self._give_up(failure, api_method, chat_id, attempt, spent)
            self.stats.retries += 1
            await asyncio.sleep(wait)

    def _give_up(
        self,
        error: TelegramAPIError,
        api_method: str,
        chat_id: ChatId | None,
        attempts: int,
        spent: float,
    ) -> TelegramAPIError:
        self.stats.given_up += 1
        logger.warning(
            "bot=%s %s to chat %s given up after %d attempt(s) in %.1fs "
            "(api_retry_for %.0fs): %s: %s",
            self.name,
            api_method,
            chat_id if chat_id is not None else "-",
            attempts,
            spent,
            self.policy.retry_for,
            type(error).__name__,
            error.message,
        )
        return error


class CallMeter(Protocol):
    """Told of every attempt of every Bot API call (the metrics)."""

    def api_call_finished(self, api_method: str, seconds: float) -> None: ...

    def api_call_failed(self, api_method: str, error: TelegramAPIError) -> None: ...


class Outbound(BaseRequestMiddleware):
    """The request middleware of the shared sessions: every registered bot's outbound calls.

    Every attempt of every call, of any bot, is timed and its failure told to
    ``meter`` when there is one.
    """

    def __init__(self, meter: CallMeter | None = None) -> None:
        self._bots: dict[str, BotOutbound] = {}
        self._meter = meter

    def register(self, bot: Bot, name: str, policy: OutboundPolicy) -> BotOutbound:
        """Apply ``policy`` to ``bot``'s calls from now on (replacing an earlier one)."""
        outbound = self._bots[bot.token] = BotOutbound(name, policy)
        return outbound

    def unregister(self, bot: Bot) -> None:
        """Forget ``bot``: its calls pass through untouched again."""
        self._bots.pop(bot.token, None)

    def stats(self) -> dict[str, OutboundStats]:
        """Each registered bot's counts, by bot name."""
        return {outbound.name: outbound.stats for outbound in self._bots.values()}

    async def __call__(
        self,
        make_request: NextRequestMiddlewareType[TelegramType],
        bot: Bot,
        method: TelegramMethod[TelegramType],
    ) -> Response[TelegramType]:
        if self._meter is not None:
            make_request = partial(self._metered, self._meter, make_request)
        outbound = self._bots.get(bot.token)
        if outbound is None or isinstance(method, GetUpdates):
            return await make_request(bot, method)
        return await outbound.call(make_request, bot, method)

    @staticmethod
    async def _metered(
        meter: CallMeter,
        make_request: NextRequestMiddlewareType[TelegramType],
        bot: Bot,
        method: TelegramMethod[TelegramType],
    ) -> Response[TelegramType]:
        started = time.monotonic()
        try:
            response = await make_request(bot, method)
        except TelegramAPIError as error:
            meter.api_call_finished(method.__api_method__, time.monotonic() - started)
            meter.api_call_failed(method.__api_method__, error)
            raise
        meter.api_call_finished(method.__api_method__, time.monotonic() - started)
        return response
