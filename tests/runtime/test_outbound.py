"""Outbound calls: retried at the call, throttled per bot, chat and group (against the emulator)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiogram import Bot
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)
from benchmarks import outbound as outbound_benchmark

from botyard.emulator import BotAPIEmulator, EmulatedBot, FloodLimits
from botyard.runtime.http_sessions import SessionPool
from botyard.runtime.outbound import BotOutbound, FloodControl, OutboundPolicy, is_send

USER = 501
GROUP = -100777


@pytest.fixture
async def emulated(bot_api: BotAPIEmulator) -> EmulatedBot:
    emulated = bot_api.add_bot("outbound_bot")
    for chat in (USER, USER + 1):
        bot_api.send_message(emulated.token, chat, "hi")
    bot_api.send_message(emulated.token, USER, "hi", chat_id=GROUP)
    return emulated


@pytest.fixture
async def pool(bot_api: BotAPIEmulator) -> AsyncIterator[SessionPool]:
    pool = SessionPool()
    yield pool
    await pool.close()


def make_bot(
    pool: SessionPool, bot_api: BotAPIEmulator, emulated: EmulatedBot, **policy: Any
) -> tuple[Bot, BotOutbound]:
    bot = Bot(emulated.token, session=pool.acquire("outbound", bot_api.url))
    return bot, pool.outbound.register(bot, "outbound", OutboundPolicy(**policy))


def texts(bot_api: BotAPIEmulator, token: str, chat_id: int = USER) -> list[str]:
    return [m["text"] for m in bot_api.sent_messages(token, chat_id)]


# -- retries -----------------------------------------------------------------------


async def test_a_429_is_waited_out_and_the_message_sent_once(
    bot_api: BotAPIEmulator, emulated: EmulatedBot, pool: SessionPool
) -> None:
    bot, outbound = make_bot(pool, bot_api, emulated)
    bot_api.add_fault("429", methods="sendMessage", every=2, retry_after=1)
    await bot.send_message(USER, "one")
    started = time.monotonic()
    await bot.send_message(USER, "two")
    assert time.monotonic() - started >= 1.0
    assert texts(bot_api, bot.token) == ["one", "two"]
    assert bot_api.calls(bot.token, "sendMessage") == 3
    assert (outbound.stats.too_many_requests, outbound.stats.retries) == (1, 1)
    assert outbound.stats.given_up == 0


@pytest.mark.parametrize(
    ("kind", "settings"),
    [("5xx", {"status": 502}), ("drop", {}), ("timeout", {"hang": 3.0})],
)
async def test_transient_failures_are_retried_with_backoff(
    bot_api: BotAPIEmulator,
    emulated: EmulatedBot,
    pool: SessionPool,
    kind: str,
    settings: dict[str, Any],
) -> None:
    bot, outbound = make_bot(pool, bot_api, emulated)
    bot_api.add_fault(kind, methods="sendMessage", times=2, **settings)
    started = time.monotonic()
    sent = await bot.send_message(USER, "through", request_timeout=1)
    assert sent.text == "through"
    assert time.monotonic() - started >= 0.45 + 0.9  # two backoffs: 0.5 s and 1 s, -10 %
    assert texts(bot_api, bot.token) == ["through"]
    assert bot_api.calls(bot.token, "sendMessage") == 3
    assert (outbound.stats.retries, outbound.stats.given_up) == (2, 0)


async def test_an_exhausted_bound_hands_the_error_over_with_one_log_line(
    bot_api: BotAPIEmulator,
    emulated: EmulatedBot,
    pool: SessionPool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bot, outbound = make_bot(pool, bot_api, emulated, retry_for=2.0)
    bot_api.add_fault("5xx", methods="sendMessage", status=502, chat_id=USER)
    caplog.set_level(logging.WARNING, logger="botyard.outbound")
    with pytest.raises(TelegramServerError, match="Bad Gateway"):
        await bot.send_message(USER, "never")
    attempts = bot_api.calls(bot.token, "sendMessage")
    assert attempts >= 3  # 0.5 s + 1 s of backoff fit in 2 s; the next 2 s do not
    assert (outbound.stats.retries, outbound.stats.given_up) == (attempts - 1, 1)
    [line] = [r.getMessage() for r in caplog.records if "given up" in r.getMessage()]
    assert line.startswith(f"bot=outbound sendMessage to chat {USER} given up after {attempts}")
    assert "TelegramServerError" in line
    assert bot.token.split(":")[1] not in line
    assert texts(bot_api, bot.token) == []
    await bot.send_message(USER + 1, "other chats are fine")


async def test_the_bound_counts_the_time_attempts_take(
    bot_api: BotAPIEmulator, emulated: EmulatedBot, pool: SessionPool
) -> None:
    bot, outbound = make_bot(pool, bot_api, emulated, retry_for=2.0)
    bot_api.add_fault("timeout", methods="sendMessage", hang=5.0)
    with pytest.raises(TelegramNetworkError, match="timeout"):
        await bot.send_message(USER, "hung", request_timeout=1)
    # 1 s attempt + 0.5 s backoff + 1 s attempt is past 2 s: no third attempt
    assert bot_api.calls(bot.token, "sendMessage") == 2
    assert (outbound.stats.retries, outbound.stats.given_up) == (1, 1)


async def test_a_429_longer_than_the_bound_gives_up_at_once_and_pauses_only_that_chat(
    bot_api: BotAPIEmulator,
    emulated: EmulatedBot,
    pool: SessionPool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bot, outbound = make_bot(pool, bot_api, emulated, retry_for=5.0)
    bot_api.add_fault("429", methods="sendMessage", chat_id=USER, retry_after=30, times=1)
    caplog.set_level(logging.WARNING, logger="botyard.outbound")
    started = time.monotonic()
    with pytest.raises(TelegramRetryAfter) as first:
        await bot.send_message(USER, "flooded")
    assert first.value.retry_after == 30
    with pytest.raises(TelegramRetryAfter) as second:  # the chat's pause: not even sent
        await bot.send_message(USER, "still flooded")
    assert 25 <= second.value.retry_after <= 30
    await bot.send_message(USER + 1, "another chat")
    assert time.monotonic() - started < 25, "nothing waited for the 30 s pause"
    assert bot_api.calls(bot.token, "sendMessage") == 2
    assert texts(bot_api, bot.token, USER + 1) == ["another chat"]
    assert outbound.stats.given_up == 2
    assert len([r for r in caplog.records if "given up" in r.getMessage()]) == 2


async def test_a_429_to_no_chat_pauses_every_send_of_the_bot(
    bot_api: BotAPIEmulator, emulated: EmulatedBot, pool: SessionPool
) -> None:
    bot, outbound = make_bot(pool, bot_api, emulated)
    bot_api.add_fault("429", methods="answerCallbackQuery", retry_after=2, times=1)
    started = time.monotonic()
    answer = asyncio.create_task(bot.answer_callback_query("123"))
    await asyncio.sleep(0.3)
    await bot.send_message(USER, "after the pause")
    assert time.monotonic() - started >= 1.9
    with pytest.raises(TelegramBadRequest, match="query is too old"):
        await answer  # retried after the 429, then answered by the emulator
    assert outbound.stats.too_many_requests == 1
    assert outbound.stats.sends_delayed == 1


async def test_errors_that_retrying_cannot_fix_are_not_retried(
    bot_api: BotAPIEmulator, emulated: EmulatedBot, pool: SessionPool
) -> None:
    bot, outbound = make_bot(pool, bot_api, emulated)
    with pytest.raises(TelegramBadRequest, match="chat not found"):
        await bot.send_message(999, "nobody")
    assert bot_api.calls(bot.token, "sendMessage") == 1
    assert outbound.stats.retries == 0


async def test_unregistered_bots_and_get_updates_pass_through(
    bot_api: BotAPIEmulator, emulated: EmulatedBot, pool: SessionPool
) -> None:
    bot = Bot(emulated.token, session=pool.acquire("outbound", bot_api.url))
    bot_api.add_fault("drop", methods=["sendMessage", "getUpdates"], times=2)
    with pytest.raises(TelegramNetworkError):
        await bot.send_message(USER, "unregistered: not retried")
    outbound = pool.outbound.register(bot, "outbound", OutboundPolicy())
    with pytest.raises(TelegramNetworkError):
        await bot.get_updates(timeout=0)  # the poller retries getUpdates itself
    assert outbound.stats.retries == 0
    pool.outbound.unregister(bot)
    assert pool.outbound.stats() == {}


# -- flood control -------------------------------------------------------------------


def test_which_methods_are_sends() -> None:
    sends = ["sendMessage", "sendPhoto", "copyMessage", "forwardMessages", "editMessageText"]
    others = ["sendChatAction", "getMe", "answerCallbackQuery", "setWebhook", "getFile"]
    assert [is_send(name) for name in sends] == [True] * len(sends)
    assert [is_send(name) for name in others] == [False] * len(others)


async def test_sends_under_the_limits_never_wait(
    bot_api: BotAPIEmulator, emulated: EmulatedBot, pool: SessionPool
) -> None:
    bot, outbound = make_bot(pool, bot_api, emulated, per_bot=1000.0)
    bot_api.enforce_flood_limits(FloodLimits(per_bot=1000.0))
    for _ in range(10):
        await bot.get_me()  # not a send: never held
    for text in ("a", "b", "c"):  # the burst
        await bot.send_message(USER, text)
    await bot.send_message(USER + 1, "d")
    assert (outbound.stats.sends_delayed, outbound.stats.send_delay_seconds) == (0, 0.0)
    started = time.monotonic()
    await bot.send_message(USER, "e")  # past the burst: waits for the chat's slot
    assert time.monotonic() - started >= 0.9
    assert outbound.stats.sends_delayed == 1
    assert outbound.stats.send_delay_seconds >= 0.9
    assert bot_api.fault_counts(bot.token)["refused"] == {}


async def test_a_group_is_held_to_its_own_rate_and_other_chats_are_not_delayed(
    bot_api: BotAPIEmulator, emulated: EmulatedBot, pool: SessionPool
) -> None:
    bot, outbound = make_bot(pool, bot_api, emulated, per_group=2.0, burst=1)
    bot_api.enforce_flood_limits(FloodLimits(per_group=2.0, per_chat=100.0, burst=1))
    started = time.monotonic()
    group = asyncio.gather(*(bot.send_message(GROUP, f"g{n}") for n in range(5)))
    await asyncio.sleep(0.05)
    private = time.monotonic()
    await bot.send_message(USER, "not held behind the group")
    assert time.monotonic() - private < 1.0
    await group
    assert time.monotonic() - started >= 2.0  # 5 at 2 a second: 4 intervals of 0.5 s
    assert sorted(texts(bot_api, bot.token, GROUP)) == [f"g{n}" for n in range(5)]
    assert bot_api.fault_counts(bot.token)["refused"] == {}
    assert outbound.stats.too_many_requests == 0


def test_idle_chats_are_evicted_so_memory_stays_bounded() -> None:
    async def send_to_many() -> int:
        flood = FloodControl(OutboundPolicy(per_bot=1e6, per_chat=1e6, burst=1))
        for chat in range(10_000):
            await flood.acquire(chat)
        return flood.tracked_chats

    assert asyncio.run(send_to_many()) < 100


def test_the_limiter_micro_benchmark_runs() -> None:
    results = asyncio.run(outbound_benchmark.measure(calls=200, runs=1))
    assert set(results) == {
        "send to a private chat, us",
        "send to a group, us",
        "getMe (not throttled), us",
    }
