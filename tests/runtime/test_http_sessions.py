"""The platform's HTTP session: shared seats, and answers parsed once (against the emulator)."""

from __future__ import annotations

import gc
import json
import weakref
from collections.abc import AsyncIterator

import pytest
from aiogram import Bot
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import TelegramConflictError, TelegramUnauthorizedError
from aiogram.methods import GetUpdates, Response
from aiogram.types import BufferedInputFile, InlineKeyboardButton, InlineKeyboardMarkup, Message
from aiohttp import web

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


@pytest.fixture
async def recording_api() -> AsyncIterator[tuple[str, list[tuple[str, str, bytes]]]]:
    """A Bot API answering every call with a message; records method, content type, body."""
    calls: list[tuple[str, str, bytes]] = []
    message = {"message_id": 1, "date": 0, "chat": {"id": 5, "type": "private"}, "text": "ok"}

    async def answer(request: web.Request) -> web.Response:
        calls.append((request.match_info["method"], request.content_type, await request.read()))
        return web.json_response({"ok": True, "result": message})

    app = web.Application()
    app.router.add_post("/bot{token}/{method}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", calls
    await runner.cleanup()


async def test_calls_go_as_json_with_aiogram_values_and_uploads_as_forms(
    recording_api: tuple[str, list[tuple[str, str, bytes]]],
) -> None:
    url, calls = recording_api
    session = PlatformSession(api=TelegramAPIServer.from_base(url))
    bot = Bot("42:TEST", session=session, default=DefaultBotProperties(parse_mode="HTML"))
    keyboard = InlineKeyboardMarkup(
        inline_keyboard=[[InlineKeyboardButton(text="yes", callback_data="y")]]
    )
    try:
        await bot.send_message(5, "<b>hi</b>", reply_markup=keyboard, disable_notification=False)
        await bot.send_document(5, BufferedInputFile(b"contents", filename="a.txt"))
    finally:
        await session.close()
    (method, content_type, body), upload = calls
    assert (method, content_type) == ("sendMessage", "application/json")
    # Nested values as JSON values (not JSON text), the bot's default parse_mode
    # resolved, False kept, unset fields left out: what aiogram's form holds.
    assert json.loads(body) == {
        "chat_id": 5,
        "text": "<b>hi</b>",
        "parse_mode": "HTML",
        "disable_notification": False,
        "reply_markup": {"inline_keyboard": [[{"text": "yes", "callback_data": "y"}]]},
    }
    assert upload[:2] == ("sendDocument", "multipart/form-data")
    assert b"contents" in upload[2]


async def test_json_calls_are_read_by_the_bot_api_as_forms_are(
    bot_api: BotAPIEmulator, emulated: EmulatedBot, bot: Bot
) -> None:
    bot_api.send_message(emulated.token, 8, "hello")
    keyboard = InlineKeyboardMarkup(
        inline_keyboard=[[InlineKeyboardButton(text="yes", callback_data="y")]]
    )
    sent = await bot.send_message(8, "hi", reply_markup=keyboard)
    assert sent.text == "hi"
    [stored] = bot_api.sent_messages(emulated.token, 8)
    assert stored["reply_markup"] == {"inline_keyboard": [[{"text": "yes", "callback_data": "y"}]]}


async def test_the_json_an_update_came_in_is_kept_until_confirmed(
    bot_api: BotAPIEmulator, emulated: EmulatedBot, bot: Bot
) -> None:
    sent = bot_api.send_message(emulated.token, 5, "one")
    [update] = await bot(GetUpdates(timeout=0))
    session = bot.session
    assert isinstance(session, PlatformSession)
    assert session.sent_as(bot, update.update_id) == sent
    other = Bot(emulated.token, session=session)  # another Bot object: not what it was bound to
    assert session.sent_as(other, update.update_id) is None
    await bot(GetUpdates(offset=update.update_id + 1, timeout=0))
    assert session.sent_as(bot, update.update_id) is None
