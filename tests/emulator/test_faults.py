"""Faults and flood limits of the emulator, met by a real aiogram client over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import (
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)

from botyard.emulator import BotAPIEmulator, ControlError, EmulatedBot, EmulatorThread, FloodLimits
from botyard.emulator.params import Params
from botyard.emulator.pytest_plugin import bot_api, bot_api_thread

__all__ = ["bot_api", "bot_api_thread"]

USER = 4242
GROUP = -1001234


@pytest.fixture
def emulated(bot_api: BotAPIEmulator) -> EmulatedBot:
    emulated = bot_api.add_bot("faulty_bot")
    bot_api.send_message(emulated.token, USER, "hi")
    return emulated


@pytest.fixture
async def bot(bot_api: BotAPIEmulator, emulated: EmulatedBot) -> AsyncIterator[Bot]:
    session = AiohttpSession(api=TelegramAPIServer.from_base(bot_api.url))
    telegram_bot = Bot(emulated.token, session=session)
    yield telegram_bot
    await session.close()


async def outcomes(bot: Bot, count: int, chat_id: int = USER, **kwargs: Any) -> list[str]:
    """Send ``count`` messages one after the other: "ok" or the exception's class name each."""
    seen = []
    for number in range(count):
        try:
            await bot.send_message(chat_id, f"m{number}", **kwargs)
            seen.append("ok")
        except Exception as exc:
            seen.append(type(exc).__name__)
    return seen


def texts(bot_api: BotAPIEmulator, token: str, chat_id: int = USER) -> list[str]:
    return [message["text"] for message in bot_api.sent_messages(token, chat_id)]


async def test_every_third_send_gets_429_with_retry_after_and_is_not_processed(
    bot_api: BotAPIEmulator, bot: Bot
) -> None:
    fault = bot_api.add_fault("429", methods="sendmessage", every=3, retry_after=7)
    with pytest.raises(TelegramRetryAfter) as raised:
        for number in range(3):
            await bot.send_message(USER, f"m{number}")
    assert raised.value.retry_after == 7
    assert await outcomes(bot, 6) == ["ok", "ok", "TelegramRetryAfter"] * 2
    assert texts(bot_api, bot.token) == ["m0", "m1", "m0", "m1", "m3", "m4"]
    assert (fault.matched, fault.injected) == (9, 3)
    assert bot_api.calls(bot.token, "sendMessage") == 9
    assert bot_api.fault_counts(bot.token) == {
        "injected": {"sendMessage": {"429": 3}},
        "refused": {},
    }
    await bot.get_me()  # other methods are left alone


async def test_server_errors_carry_the_chosen_status(bot_api: BotAPIEmulator, bot: Bot) -> None:
    bot_api.add_fault("5xx", methods=["sendMessage"], times=1)
    bot_api.add_fault("5xx", methods=["getMe"], status=503)
    assert await outcomes(bot, 2) == ["TelegramServerError", "ok"]
    with pytest.raises(TelegramServerError, match="Service Unavailable"):
        await bot.get_me()
    async with aiohttp.ClientSession() as http:
        response = await http.post(f"{bot_api.url}/bot{bot.token}/getMe")
        assert response.status == 503
        assert await response.json() == {
            "ok": False,
            "error_code": 503,
            "description": "Service Unavailable",
        }
    assert texts(bot_api, bot.token) == ["m1"]


async def test_a_dropped_connection_answers_nothing_and_sends_nothing(
    bot_api: BotAPIEmulator, bot: Bot
) -> None:
    bot_api.add_fault("drop", methods="sendMessage", every=2)
    assert await outcomes(bot, 4) == ["ok", "TelegramNetworkError"] * 2
    assert texts(bot_api, bot.token) == ["m0", "m2"]
    assert bot_api.fault_counts(bot.token)["injected"] == {"sendMessage": {"drop": 2}}


async def test_a_timeout_hangs_past_the_clients_patience_and_sends_nothing(
    bot_api: BotAPIEmulator, bot: Bot
) -> None:
    bot_api.add_fault("timeout", methods="sendMessage", hang=1.5, times=1)
    with pytest.raises(TelegramNetworkError, match="timeout"):
        await bot.send_message(USER, "slow", request_timeout=1)
    await asyncio.sleep(1.0)  # the held request ends without being processed
    await bot.send_message(USER, "fast")
    assert texts(bot_api, bot.token) == ["fast"]


async def test_a_seeded_probability_repeats_and_bot_and_chat_narrow_the_rule(
    bot_api: BotAPIEmulator, bot: Bot, emulated: EmulatedBot
) -> None:
    def pattern(seed: int) -> list[bool]:
        rule = bot_api.add_fault("5xx", probability=0.5, seed=seed)
        struck = [rule.strikes(emulated, "getMe", _no_params()) for _ in range(40)]
        bot_api.remove_fault(rule)
        return struck

    first = pattern(7)
    assert first == pattern(7)
    assert 5 < sum(first) < 35
    assert first != pattern(8)

    other = bot_api.add_bot("other_bot")
    bot_api.add_fault("5xx", methods="sendMessage", bot="@other_bot")
    bot_api.add_fault("drop", methods="sendMessage", chat_id=GROUP)
    bot_api.send_message(bot.token, USER, "in the group", chat_id=GROUP)
    assert await outcomes(bot, 2) == ["ok", "ok"]
    assert await outcomes(bot, 1, chat_id=GROUP) == ["TelegramNetworkError"]
    assert bot_api.fault_counts(other.token) == {"injected": {}, "refused": {}}
    bot_api.add_fault("429", probability=0.0)
    bot_api.clear_faults()
    assert bot_api.faults == []
    assert await outcomes(bot, 1, chat_id=GROUP) == ["ok"]


def _no_params() -> Params:
    return Params({})


@pytest.mark.parametrize(
    ("kind", "settings", "message"),
    [
        ("418", {}, "unknown fault kind '418'"),
        ("429", {"every": 0}, "every must be at least 1"),
        ("429", {"every": 2, "probability": 0.5}, "either every or probability"),
        ("429", {"probability": 1.5}, "probability must be between 0 and 1"),
        ("429", {"retry_after": 0}, "retry_after must be at least 1"),
        ("5xx", {"status": 404}, "status must be a 5xx"),
        ("timeout", {"hang": 0}, "hang must be a positive"),
        ("drop", {"times": 0}, "times must be at least 1"),
        ("drop", {"methods": ["sendSticker"]}, "methods must name Bot API methods"),
        ("drop", {"bot": "@nobody"}, "unknown bot '@nobody'"),
    ],
)
def test_bad_fault_settings_are_named(
    bot_api: BotAPIEmulator, kind: str, settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ControlError, match=message):
        bot_api.add_fault(kind, **settings)
    assert bot_api.faults == []


async def test_flood_limits_refuse_a_chat_beyond_its_burst_then_recover(
    bot_api: BotAPIEmulator, bot: Bot
) -> None:
    bot_api.enforce_flood_limits(FloodLimits(per_chat=2.0, burst=3, tolerance=0.0))
    with pytest.raises(TelegramRetryAfter) as raised:
        for number in range(4):
            await bot.send_message(USER, f"m{number}")
    assert raised.value.retry_after == 1
    assert texts(bot_api, bot.token) == ["m0", "m1", "m2"]
    await asyncio.sleep(0.6)  # one slot frees after 0.5 s at 2 per second
    await bot.send_message(USER, "later")
    assert bot_api.fault_counts(bot.token) == {
        "injected": {},
        "refused": {"sendMessage": {"chat": 1}},
    }
    await bot.get_me()  # not a send: never refused
    bot_api.lift_flood_limits()
    assert bot_api.flood_limits is None
    assert await outcomes(bot, 5) == ["ok"] * 5


async def test_flood_limits_per_group_and_per_bot(bot_api: BotAPIEmulator, bot: Bot) -> None:
    bot_api.send_message(bot.token, USER, "in the group", chat_id=GROUP)
    limits = FloodLimits(per_bot=1000.0, per_chat=1000.0, per_group=20 / 60, burst=2)
    bot_api.enforce_flood_limits(limits)
    assert await outcomes(bot, 3, chat_id=GROUP) == ["ok", "ok", "TelegramRetryAfter"]
    with pytest.raises(TelegramRetryAfter) as raised:
        await bot.send_message(GROUP, "again")
    assert raised.value.retry_after == 3  # one message per 3 s, less the tolerance
    assert await outcomes(bot, 2) == ["ok", "ok"]  # a private chat is no group

    bot_api.enforce_flood_limits(FloodLimits(per_bot=1.0, burst=2, tolerance=0.0))
    for chat in range(1, 4):
        bot_api.send_message(bot.token, chat, "hi")
    assert [(await outcomes(bot, 1, chat_id=chat))[0] for chat in range(1, 4)] == [
        "ok",
        "ok",
        "TelegramRetryAfter",
    ]
    assert bot_api.fault_counts(bot.token)["refused"] == {"sendMessage": {"bot": 1, "group": 2}}


async def test_http_control_api_for_faults_and_flood_limits(
    bot_api: BotAPIEmulator, bot: Bot
) -> None:
    base = f"{bot_api.url}/_emulator"
    async with aiohttp.ClientSession() as http:
        response = await http.post(
            f"{base}/faults",
            json={"kind": "429", "methods": "sendMessage", "every": 2, "retry_after": 3},
        )
        assert response.status == 200
        added = await response.json()
        assert {k: added[k] for k in ("kind", "methods", "every", "retry_after")} == {
            "kind": "429",
            "methods": ["sendMessage"],
            "every": 2,
            "retry_after": 3,
        }
        assert await outcomes(bot, 2) == ["ok", "TelegramRetryAfter"]
        listed = await (await http.get(f"{base}/faults")).json()
        assert [(f["id"], f["matched"], f["injected"]) for f in listed["faults"]] == [
            (added["id"], 2, 1)
        ]
        counts = await (await http.get(f"{base}/bots/faulty_bot/faults")).json()
        assert counts == {"injected": {"sendMessage": {"429": 1}}, "refused": {}}
        response = await http.delete(f"{base}/faults/{added['id']}")
        assert await response.json() == {"removed": 1}
        assert (await http.delete(f"{base}/faults/{added['id']}")).status == 400

        response = await http.post(f"{base}/faults", json={"kind": "5xx", "status": "x"})
        assert response.status == 400
        assert "'status' must be an integer" in (await response.json())["error"]
        response = await http.post(f"{base}/faults", json={"kind": "drop", "methods": 3})
        assert response.status == 400
        await http.post(f"{base}/faults", json={"kind": "drop", "probability": 1})
        assert await (await http.delete(f"{base}/faults")).json() == {"removed": 1}

        assert await (await http.get(f"{base}/flood_limits")).json() == {"flood_limits": None}
        response = await http.put(f"{base}/flood_limits", json={"per_chat": 2, "burst": 1})
        shown = (await response.json())["flood_limits"]
        assert (shown["per_bot"], shown["per_chat"], shown["burst"]) == (30.0, 2.0, 1)
        assert bot_api.flood_limits == FloodLimits(per_chat=2.0, burst=1)
        response = await http.put(f"{base}/flood_limits", json={"burst": 0})
        assert response.status == 400
        assert "burst must be at least 1" in (await response.json())["error"]
        await http.delete(f"{base}/flood_limits")
        assert bot_api.flood_limits is None


def test_emulator_thread_injects_faults(bot_api_thread: EmulatorThread) -> None:
    emulated = bot_api_thread.add_bot("threaded_bot")
    bot_api_thread.send_message(emulated.token, USER, "hi")
    fault = bot_api_thread.add_fault("5xx", methods="sendMessage", times=1)
    bot_api_thread.enforce_flood_limits(FloodLimits(per_chat=1.0, burst=1, tolerance=0.0))

    async def send_twice() -> list[str]:
        session = AiohttpSession(api=TelegramAPIServer.from_base(bot_api_thread.url))
        async with Bot(emulated.token, session=session) as telegram_bot:
            return await outcomes(telegram_bot, 3)

    assert asyncio.run(send_twice()) == ["TelegramServerError", "ok", "TelegramRetryAfter"]
    assert bot_api_thread.fault_counts(emulated.token) == {
        "injected": {"sendMessage": {"5xx": 1}},
        "refused": {"sendMessage": {"chat": 1}},
    }
    bot_api_thread.remove_fault(fault)
    bot_api_thread.lift_flood_limits()
    bot_api_thread.clear_faults()
