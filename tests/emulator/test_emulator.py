"""The Bot API emulator, exercised over real HTTP by real aiogram bots."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiogram import Bot, Dispatcher, Router
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramConflictError,
    TelegramUnauthorizedError,
)
from aiogram.filters import CommandStart
from aiogram.methods import SendMessage
from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup, Message
from aiogram.webhook.aiohttp_server import SimpleRequestHandler
from aiohttp import web

from botyard.emulator import BotAPIEmulator, ControlError, EmulatedBot, EmulatorThread
from botyard.emulator.emulator import LISTEN_BACKLOG
from botyard.emulator.pytest_plugin import bot_api, bot_api_thread

# Listed so linters see the imported fixtures as used; pytest finds them by name.
__all__ = ["bot_api", "bot_api_thread"]

USER = 4242

Handler = Callable[[web.Request], Any]


@pytest.fixture
def emulated(bot_api: BotAPIEmulator) -> EmulatedBot:
    return bot_api.add_bot("echo_bot")


@pytest.fixture
async def bot(bot_api: BotAPIEmulator, emulated: EmulatedBot) -> AsyncIterator[Bot]:
    """A real aiogram Bot whose API server is the emulator."""
    session = AiohttpSession(api=TelegramAPIServer.from_base(bot_api.url))
    telegram_bot = Bot(emulated.token, session=session)
    yield telegram_bot
    await session.close()


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


@asynccontextmanager
async def serve(handler: Handler | web.Application) -> AsyncIterator[str]:
    """A small HTTP server on loopback; yields its base URL."""
    if isinstance(handler, web.Application):
        app = handler
    else:
        app = web.Application()
        app.router.add_post("/hook", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


# -- Bot API through aiogram ------------------------------------------------


def test_generated_tokens_have_telegrams_shape(bot_api: BotAPIEmulator) -> None:
    token = bot_api.add_bot().token
    assert re.fullmatch(r"\d{8,10}:AA[A-Za-z0-9_-]{33}", token)
    assert bot_api.bot(token).id == int(token.split(":")[0])


async def test_get_me(bot: Bot, emulated: EmulatedBot) -> None:
    me = await bot.get_me()
    assert (me.id, me.username, me.is_bot) == (emulated.id, "echo_bot", True)


async def test_offset_confirms_updates(bot_api: BotAPIEmulator, bot: Bot) -> None:
    sent = bot_api.send_message(bot.token, USER, "/start now")
    updates = await bot.get_updates(timeout=0)
    assert [u.update_id for u in updates] == [sent["update_id"]]
    message = updates[0].message
    assert message is not None
    assert message.text == "/start now"
    assert message.entities is not None
    assert message.entities[0].type == "bot_command"
    assert message.entities[0].length == len("/start")
    assert await bot.get_updates(timeout=0) != []  # not confirmed yet
    assert await bot.get_updates(offset=sent["update_id"] + 1, timeout=0) == []
    assert bot_api.pending_updates(bot.token) == []
    assert bot_api.confirmed_offset(bot.token) == sent["update_id"] + 1
    assert await bot.get_updates(timeout=0) == []  # dropped forever
    assert bot_api.calls(bot.token, "getupdates") == 4


async def test_long_poll_answers_as_soon_as_an_update_arrives(
    bot_api: BotAPIEmulator, bot: Bot
) -> None:
    poll = asyncio.create_task(bot.get_updates(timeout=10))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    bot_api.send_message(bot.token, USER, "hello")
    updates = await asyncio.wait_for(poll, 2)
    assert time.monotonic() - started < 1
    assert [u.message.text for u in updates if u.message] == ["hello"]


async def test_allowed_updates_filters_new_updates(bot_api: BotAPIEmulator, bot: Bot) -> None:
    bot_api.send_message(bot.token, USER, "/start")
    [first] = await bot.get_updates(timeout=0, allowed_updates=["callback_query"])
    assert await bot.get_updates(offset=first.update_id + 1, timeout=0) == []
    bot_api.send_message(bot.token, USER, "ignored")
    assert bot_api.pending_updates(bot.token) == []
    await bot.get_updates(timeout=0, allowed_updates=[])  # back to the default types
    bot_api.send_message(bot.token, USER, "seen")
    assert len(bot_api.pending_updates(bot.token)) == 1


async def test_inline_keyboard_and_button_press(bot_api: BotAPIEmulator, bot: Bot) -> None:
    bot_api.send_message(bot.token, USER, "/start")
    keyboard = InlineKeyboardMarkup(
        inline_keyboard=[[InlineKeyboardButton(text="Yes", callback_data="answer:yes")]]
    )
    sent = await bot.send_message(USER, "Continue?", reply_markup=keyboard)
    assert sent.reply_markup is not None
    assert sent.reply_markup.model_dump() == keyboard.model_dump()
    assert sent.from_user is not None
    assert sent.from_user.id == bot.id
    assert sent.chat.id == USER
    assert sent.text == "Continue?"

    pressed = bot_api.press_button(bot.token, USER, sent.message_id, "answer:yes")
    updates = await bot.get_updates(offset=pressed["update_id"], timeout=0)
    query = updates[0].callback_query
    assert query is not None
    assert query.data == "answer:yes"
    assert query.message is not None
    assert query.message.message_id == sent.message_id
    assert query.from_user.id == USER

    assert await bot.answer_callback_query(query.id, text="Noted")
    assert bot_api.callback_answer(bot.token, query.id) == {"show_alert": False, "text": "Noted"}
    with pytest.raises(TelegramBadRequest, match="query is too old"):
        await bot.answer_callback_query(query.id)
    with pytest.raises(ControlError, match="no button with callback_data 'answer:no'"):
        bot_api.press_button(bot.token, USER, sent.message_id, "answer:no")


async def test_edit_message_text_keeps_history(bot_api: BotAPIEmulator, bot: Bot) -> None:
    bot_api.send_message(bot.token, USER, "/start")
    sent = await bot.send_message(USER, "<b>Step 1</b>", parse_mode="HTML")
    assert sent.text == "Step 1"
    edited = await bot.edit_message_text(text="Step 2", chat_id=USER, message_id=sent.message_id)
    assert isinstance(edited, Message)
    assert edited.text == "Step 2"
    [stored] = bot_api.sent_messages(bot.token, chat_id=USER)
    assert stored["text"] == "Step 2"
    assert [version["text"] for version in stored["edit_history"]] == ["Step 1"]
    with pytest.raises(TelegramBadRequest, match="message is not modified"):
        await bot.edit_message_text(text="Step 2", chat_id=USER, message_id=sent.message_id)
    with pytest.raises(TelegramBadRequest, match="message to edit not found"):
        await bot.edit_message_text(text="x", chat_id=USER, message_id=999)


async def test_bad_requests(bot_api: BotAPIEmulator, bot: Bot) -> None:
    with pytest.raises(TelegramBadRequest, match="chat not found"):
        await bot.send_message(USER, "nobody wrote to me")
    bot_api.send_message(bot.token, USER, "hi")
    with pytest.raises(TelegramBadRequest, match="message text is empty"):
        await bot.send_message(USER, "")
    async with aiohttp.ClientSession() as http:
        response = await http.post(f"{bot_api.url}/bot{bot.token}/sendSticker")
        assert response.status == 404
        assert await response.json() == {
            "ok": False,
            "error_code": 404,
            "description": "Not Found: method not found",
        }


async def test_revoked_and_unknown_tokens_are_unauthorized(
    bot_api: BotAPIEmulator, bot: Bot
) -> None:
    await bot.get_me()
    bot_api.revoke(bot.token)
    with pytest.raises(TelegramUnauthorizedError):
        await bot.get_me()
    async with aiohttp.ClientSession() as http:
        response = await http.get(f"{bot_api.url}/bot123:unknown/getMe")
        assert response.status == 401
        assert await response.json() == {
            "ok": False,
            "error_code": 401,
            "description": "Unauthorized",
        }


async def test_a_newer_get_updates_terminates_the_older_one(
    bot_api: BotAPIEmulator, bot: Bot
) -> None:
    older = asyncio.create_task(bot.get_updates(timeout=10))
    await asyncio.sleep(0.2)
    assert await bot.get_updates(timeout=0) == []
    with pytest.raises(TelegramConflictError, match="terminated by other getUpdates request"):
        await asyncio.wait_for(older, 2)
    assert bot_api.conflicts(bot.token) == 1


async def test_an_abandoned_poll_ended_by_the_next_one_is_no_conflict(
    bot_api: BotAPIEmulator, bot: Bot
) -> None:
    abandoned = asyncio.create_task(bot.get_updates(timeout=10))
    await asyncio.sleep(0.2)
    abandoned.cancel()  # what a runner does when it stops: the connection closes
    await asyncio.gather(abandoned, return_exceptions=True)
    await asyncio.sleep(0.2)
    assert await bot.get_updates(timeout=0) == []
    await asyncio.sleep(0.2)
    assert bot_api.conflicts(bot.token) == 0


async def test_get_updates_conflicts_with_a_webhook(bot_api: BotAPIEmulator, bot: Bot) -> None:
    await bot.set_webhook("http://127.0.0.1:9/hook")
    with pytest.raises(TelegramConflictError, match="webhook is active"):
        await bot.get_updates(timeout=0)
    info = await bot.get_webhook_info()
    assert info.url == "http://127.0.0.1:9/hook"
    await bot.delete_webhook()
    assert await bot.get_updates(timeout=0) == []
    assert bot_api.webhook_info(bot.token)["url"] == ""


async def test_webhook_retries_until_a_2xx(bot_api: BotAPIEmulator, bot: Bot) -> None:
    received: list[tuple[int, str | None]] = []

    async def hook(request: web.Request) -> web.Response:
        update = await request.json()
        secret = request.headers.get("X-Telegram-Bot-Api-Secret-Token")
        received.append((update["update_id"], secret))
        return web.Response(status=500 if len(received) == 1 else 200)

    async with serve(hook) as base:
        first = bot_api.send_message(bot.token, USER, "one")
        second = bot_api.send_message(bot.token, USER, "two")
        await bot.set_webhook(f"{base}/hook", secret_token="s3cret_-X", max_connections=1)
        await eventually(lambda: not bot_api.pending_updates(bot.token))
    ids = [first["update_id"], second["update_id"]]
    assert received == [(ids[0], "s3cret_-X"), (ids[0], "s3cret_-X"), (ids[1], "s3cret_-X")]
    attempts = bot_api.delivery_attempts(bot.token)
    assert [(a.update_id, a.status) for a in attempts] == [
        (ids[0], 500),
        (ids[0], 200),
        (ids[1], 200),
    ]
    info = await bot.get_webhook_info()
    assert info.pending_update_count == 0
    assert info.last_error_message == "Wrong response from the webhook: 500 Internal Server Error"


async def test_webhook_max_connections_bounds_concurrent_deliveries(
    bot_api: BotAPIEmulator, bot: Bot
) -> None:
    in_flight = 0
    most = 0

    async def slow_hook(request: web.Request) -> web.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.1)
        in_flight -= 1
        return web.json_response({})

    async with serve(slow_hook) as base:
        for number in range(6):
            bot_api.send_message(bot.token, USER, f"message {number}")
        await bot.set_webhook(f"{base}/hook", max_connections=2)
        await eventually(lambda: not bot_api.pending_updates(bot.token))
    assert most == 2
    assert len(bot_api.delivery_attempts(bot.token)) == 6


async def test_webhook_answer_with_a_method_is_executed(bot_api: BotAPIEmulator, bot: Bot) -> None:
    """aiogram's SimpleRequestHandler answers with the handler's returned method."""
    router = Router()

    @router.message(CommandStart())
    async def start(message: Message) -> SendMessage:
        return message.answer(
            f"Welcome, {message.from_user.first_name if message.from_user else ''}"
        )

    dispatcher = Dispatcher()
    dispatcher.include_router(router)
    app = web.Application()
    SimpleRequestHandler(dispatcher, bot, secret_token="hook-secret").register(app, "/hook")
    bot_api.user(USER, first_name="Ada")
    async with serve(app) as base:
        await bot.set_webhook(f"{base}/hook", secret_token="hook-secret")
        bot_api.send_message(bot.token, USER, "/start")
        reply = await bot_api.wait_for_reply(bot.token, USER, timeout=5)
    assert reply["text"] == "Welcome, Ada"
    assert [a.status for a in bot_api.delivery_attempts(bot.token)] == [200]


async def test_dispatcher_polling_answers_start(bot_api: BotAPIEmulator, bot: Bot) -> None:
    router = Router()

    @router.message(CommandStart())
    async def start(message: Message) -> None:
        await message.answer("Hello!")
        await message.answer("How can I help?")

    dispatcher = Dispatcher()
    dispatcher.include_router(router)
    polling = asyncio.create_task(
        dispatcher.start_polling(bot, handle_signals=False, close_bot_session=False)
    )
    try:
        bot_api.send_message(bot.token, USER, "/start")
        replies = await bot_api.wait_for_reply(bot.token, USER, count=2, timeout=5)
        assert isinstance(replies, list)
        assert [m["text"] for m in replies] == ["Hello!", "How can I help?"]
        assert replies[0]["from"]["username"] == "echo_bot"
        bot_api.send_message(bot.token, USER, "/start")
        again = await bot_api.wait_for_reply(bot.token, USER, text="How can I help?", timeout=5)
        assert again["message_id"] > replies[1]["message_id"]
    finally:
        await dispatcher.stop_polling()
        await polling


async def test_wait_for_reply_timeout_describes_the_chat(
    bot_api: BotAPIEmulator, emulated: EmulatedBot
) -> None:
    bot_api.send_message(emulated.token, USER, "/start")
    with pytest.raises(TimeoutError) as caught:
        await bot_api.wait_for_reply(emulated.token, USER, timeout=0.1)
    description = str(caught.value)
    assert "@echo_bot" in description
    assert "#1 user: '/start'" in description
    assert "1 unconfirmed update(s)" in description
    assert emulated.token not in description


async def test_subscribers_see_what_happens(bot_api: BotAPIEmulator, bot: Bot) -> None:
    with bot_api.subscribe() as events:
        update = bot_api.send_message(bot.token, USER, "hi")
        await bot.get_updates(timeout=0)
        await bot.send_message(USER, "hello")
        kinds = [(await events.get()).kind for _ in range(3)]
        assert kinds == ["update_queued", "update_delivered", "message_sent"]
    assert events.closed
    assert update["message"]["text"] == "hi"


# -- HTTP control API ---------------------------------------------------------


async def test_http_control_api(bot_api: BotAPIEmulator) -> None:
    control = f"{bot_api.url}/_emulator"
    async with aiohttp.ClientSession() as http:
        created = await (await http.post(f"{control}/bots", json={"username": "shop_bot"})).json()
        token = created["token"]
        assert created["username"] == "shop_bot"

        response = await http.post(
            f"{control}/bots/shop_bot/messages", json={"user_id": USER, "text": "/start"}
        )
        update = await response.json()
        assert update["message"]["text"] == "/start"
        pending = await (await http.get(f"{control}/bots/{token}/updates")).json()
        assert [u["update_id"] for u in pending["pending"]] == [update["update_id"]]

        async def bot_replies() -> None:
            await asyncio.sleep(0.2)
            await http.post(
                f"{bot_api.url}/bot{token}/sendMessage",
                data={"chat_id": str(USER), "text": "Welcome"},
            )

        replying = asyncio.create_task(bot_replies())
        response = await http.get(
            f"{control}/bots/@shop_bot/replies", params={"chat_id": USER, "timeout": "5"}
        )
        await replying
        [welcome] = (await response.json())["messages"]
        assert welcome["text"] == "Welcome"
        sent = await (await http.get(f"{control}/bots/shop_bot/sent")).json()
        assert sent["messages"] == [welcome]

        after = {"chat_id": USER, "timeout": "0.1", "after_message_id": welcome["message_id"]}
        response = await http.get(f"{control}/bots/shop_bot/replies", params=after)
        assert response.status == 408
        assert "did not send 1 message(s)" in (await response.json())["error"]
        response = await http.post(f"{control}/bots/nobody_bot/messages", json={})
        assert response.status == 404
        assert "nobody_bot" in (await response.json())["error"]
        response = await http.post(f"{control}/bots/shop_bot/messages", data=b"{not json")
        assert response.status == 400
        assert "not valid JSON" in (await response.json())["error"]

        keyboard = {"inline_keyboard": [[{"text": "Buy", "callback_data": "buy"}]]}
        await http.post(
            f"{bot_api.url}/bot{token}/sendMessage",
            json={"chat_id": USER, "text": "Menu", "reply_markup": keyboard},
        )
        menu = await (await http.get(f"{control}/bots/shop_bot/sent")).json()
        pressed = {"user_id": USER, "message_id": menu["messages"][-1]["message_id"]}
        response = await http.post(
            f"{control}/bots/shop_bot/buttons", json={**pressed, "callback_data": "buy"}
        )
        assert (await response.json())["callback_query"]["data"] == "buy"
        response = await http.post(
            f"{control}/bots/shop_bot/buttons", json={**pressed, "callback_data": "sell"}
        )
        assert response.status == 400
        assert "no button with callback_data 'sell'" in (await response.json())["error"]
        calls = await (await http.get(f"{control}/bots/shop_bot/calls")).json()
        assert calls == {"calls": {"sendMessage": 2}}

        await http.post(f"{control}/bots/shop_bot/revoke")
        response = await http.get(f"{bot_api.url}/bot{token}/getMe")
        assert response.status == 401


# -- EmulatorThread -----------------------------------------------------------


def _call_bot_api(url: str, token: str, method: str, **params: Any) -> Any:
    request = urllib.request.Request(
        f"{url}/bot{token}/{method}",
        data=json.dumps(params).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)["result"]


def test_emulator_thread_drives_a_bot_synchronously(bot_api_thread: EmulatorThread) -> None:
    emulated = bot_api_thread.add_bot("sync_bot")
    update = bot_api_thread.send_message(emulated.token, USER, "/start")
    updates = _call_bot_api(bot_api_thread.url, emulated.token, "getUpdates", timeout=1)
    assert [u["update_id"] for u in updates] == [update["update_id"]]
    _call_bot_api(bot_api_thread.url, emulated.token, "sendMessage", chat_id=USER, text="Hi")
    reply = bot_api_thread.wait_for_reply(emulated.token, USER, timeout=5)
    assert isinstance(reply, dict)
    assert reply["text"] == "Hi"
    assert [m["text"] for m in bot_api_thread.sent_messages(emulated.token)] == ["Hi"]
    assert bot_api_thread.calls(emulated.token, "sendMessage") == 1
    bot_api_thread.revoke(emulated.token)
    with pytest.raises(urllib.error.HTTPError) as caught:
        _call_bot_api(bot_api_thread.url, emulated.token, "getMe")
    assert caught.value.code == 401
    caught.value.close()


def test_emulator_thread_stops_cleanly() -> None:
    thread = EmulatorThread().start()
    url = thread.url
    thread.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{url}/_emulator", timeout=2)


# -- standalone -----------------------------------------------------------------


def test_standalone_emulator_prints_its_url_and_tokens() -> None:
    command = [sys.executable, "-m", "botyard.emulator", "--port", "0", "--bots", "2"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            url = process.stdout.readline().split()[3]
            tokens = [process.stdout.readline().split("token=")[1].strip() for _ in range(2)]
            with urllib.request.urlopen(f"{url}/_emulator/bots", timeout=5) as response:
                assert [bot["token"] for bot in json.load(response)] == tokens
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0


async def test_thousands_of_simultaneous_connections_are_queued_not_dropped(
    bot_api: BotAPIEmulator,
) -> None:
    """The listening socket queues LISTEN_BACKLOG connections (aiohttp's default is
    128: more bots connecting at once had their attempts dropped and retransmitted
    after 1 s, 3 s...). ``ss`` reads the kernel's limit for the socket."""
    if shutil.which("ss") is None:
        pytest.skip("needs ss (iproute2) to read the listening socket's backlog")
    port = int(bot_api.url.rsplit(":", 1)[1])
    backlog, somaxconn = await asyncio.to_thread(_listen_backlog, port)
    assert backlog == min(LISTEN_BACKLOG, somaxconn)


def _listen_backlog(port: int) -> tuple[int, int]:
    """The backlog of the socket listening on ``port`` (a listener's Send-Q in ``ss``),
    and the system's cap on any backlog."""
    listing = subprocess.run(
        ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout.split()
    return int(listing[2]), int(Path("/proc/sys/net/core/somaxconn").read_text())
