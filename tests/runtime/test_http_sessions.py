"""The platform's HTTP session: shared seats, and answers parsed once (against the emulator)."""

from __future__ import annotations

import gc
import json
import weakref
from collections.abc import AsyncIterator

import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import TelegramConflictError, TelegramUnauthorizedError
from aiogram.methods import GetUpdates, Response
from aiogram.types import Message

from botyard.emulator import BotAPIEmulator, EmulatedBot
from botyard.runtime.http_sessions import PlatformSession, SessionPool


@pytest.fixture
async def emulated(bot_api: BotAPIEmulator) -> EmulatedBot:
    return bot_api.add_bot("sessions_bot")


@pytest.fixture
async def bot(bot_api: BotAPIEmulator, emulated: EmulatedBot) -> AsyncIterator[Bot]:
    session = PlatformSession(api=TelegramAPIServer.from_base(bot_api.url))
    bot = Bot(emulated.token, session=session)
    yield bot
    await session.close()


async def test_unconfirmed_updates_are_parsed_once(
    bot_api: BotAPIEmulator, emulated: EmulatedBot, bot: Bot
) -> None:
    bot_api.send_message(emulated.token, 5, "one")
    bot_api.send_message(emulated.token, 5, "two")
    first = await bot(GetUpdates(timeout=0))
    again = await bot(GetUpdates(offset=first[0].update_id, timeout=0))
    assert [update.message.text for update in again if update.message] == ["one", "two"]
    assert all(a is b for a, b in zip(first, again, strict=True)), "parsed again"
    bot_api.send_message(emulated.token, 5, "three")
    later = await bot(GetUpdates(offset=first[1].update_id, timeout=0))
    assert [update.update_id for update in later] == [first[1].update_id, first[1].update_id + 1]
    assert later[0] is first[1]
    assert later[1].message is not None
    assert later[1].message.text == "three"


async def test_updates_read_as_aiogram_reads_them(
    bot_api: BotAPIEmulator, emulated: EmulatedBot, bot: Bot
) -> None:
    bot_api.send_message(emulated.token, 6, "/start hello")
    plain_session = AiohttpSession(api=TelegramAPIServer.from_base(bot_api.url))
    plain = Bot(emulated.token, session=plain_session)
    try:
        expected = await plain(GetUpdates(timeout=0))
    finally:
        await plain_session.close()
    got = await bot(GetUpdates(timeout=0))
    assert [u.model_dump() for u in got] == [u.model_dump() for u in expected]
    assert got[0].bot is bot  # bound to the bot, so message.answer() works
    await got[0].message.answer("hi")  # type: ignore[union-attr]
    assert bot_api.sent_messages(emulated.token, 6)[-1]["text"] == "hi"


async def test_errors_are_aiogram_errors(
    bot_api: BotAPIEmulator, emulated: EmulatedBot, bot: Bot
) -> None:
    await bot.set_webhook("https://example.invalid/hook")
    with pytest.raises(TelegramConflictError):
        await bot(GetUpdates(timeout=0))
    bot_api.revoke(emulated.token)
    with pytest.raises(TelegramUnauthorizedError):
        await bot(GetUpdates(timeout=0))


async def test_response_models_survive_garbage_collection(
    bot_api: BotAPIEmulator, emulated: EmulatedBot, bot: Bot
) -> None:
    bot_api.send_message(emulated.token, 7, "hello")
    await bot.send_message(7, "answer")
    gc.collect()
    model = weakref.ref(Response[Message])
    gc.collect()
    assert model() is not None, "pydantic rebuilds the response model after every collection"


async def test_session_pool_shares_sessions_per_api_server_and_grows() -> None:
    pool = SessionPool(bots_per_session=2)
    a = pool.acquire("a", "http://127.0.0.1:1")
    b = pool.acquire("b", "http://127.0.0.1:1")
    c = pool.acquire("c", "http://127.0.0.1:1")
    other = pool.acquire("d", "http://127.0.0.1:2")
    assert isinstance(a, PlatformSession)
    assert a is b
    assert c is not a
    assert other not in (a, b, c)
    connector = (await a.create_session()).connector
    assert connector is not None
    assert connector.limit >= 2 * 2, "each bot's long poll holds a connection"
    with pytest.raises(RuntimeError, match="already holds a session"):
        pool.acquire("a", None)
    await pool.release("c")
    assert pool.acquire("e", "http://127.0.0.1:1") is not c, "an emptied session is closed"
    await pool.close()


async def test_a_bot_restarted_with_a_new_token_gets_its_updates_bound_to_it(
    bot_api: BotAPIEmulator, emulated: EmulatedBot, bot: Bot
) -> None:
    """Hot reload changed the token: the new runner's Bot shares the session and bot id."""
    bot_api.send_message(emulated.token, 5, "one")
    bot_api.send_message(emulated.token, 5, "two")
    first = await bot(GetUpdates(timeout=0))
    assert first[0].message is not None
    assert first[0].message.bot is bot
    renewed = Bot(f"{emulated.id}:{'N' * 35}", session=bot.session)
    answer = json.dumps({"ok": True, "result": bot_api.pending_updates(emulated.token)})
    session = bot.session
    assert isinstance(session, PlatformSession)
    again = session.check_response(renewed, GetUpdates(timeout=0), 200, answer).result
    assert again is not None
    assert [update.update_id for update in again] == [update.update_id for update in first]
    for old, new in zip(first, again, strict=True):
        assert new is not old
        assert new.message is not None
        assert new.message.bot is renewed, "a reply would go out with the old token"


async def test_releasing_a_seat_forgets_the_bots_updates(
    bot_api: BotAPIEmulator, emulated: EmulatedBot
) -> None:
    pool = SessionPool()
    session = pool.acquire("sessions", bot_api.url)
    pool.acquire("another", bot_api.url)  # keeps the session open
    bot = Bot(emulated.token, session=session)
    bot_api.send_message(emulated.token, 5, "one")
    await bot(GetUpdates(timeout=0))
    assert isinstance(session, PlatformSession)
    assert session._unconfirmed
    await pool.release("sessions", bot)
    assert session._unconfirmed == {}
    await pool.close()
