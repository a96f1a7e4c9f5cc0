"""The sandbox's HTTP side: the page, its static files, the JSON API and the live stream.

Every answer under ``/api`` is JSON; an error is ``{"error": "<what is wrong>"}``
with 400 (bad input), 404 (unknown bot, user or endpoint), 405, 409 (the bot
is disabled or not started), 415 (a POST without a JSON content type) or 503
(the database is starting). The API is
described in :mod:`botyard.sandbox`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from botyard.emulator import EmulatorEvent, Subscription
from botyard.sandbox.views import JSON, MAX_WAIT, PageError

if TYPE_CHECKING:
    from botyard.sandbox.service import Sandbox

STATIC = Path(__file__).with_name("static")
#: How often a live stream re-reads what the emulator does not announce (FSM records, counters).
REFRESH = 0.5
#: A comment line this often lets a stream notice that its reader has gone.
KEEPALIVE = 15.0

# FSM data may hold dates or ObjectIds: shown as text, never a crash.
dumps = functools.partial(json.dumps, default=str, ensure_ascii=False)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_app(sandbox: Sandbox) -> web.Application:
    """The aiohttp application serving ``sandbox``'s page and API."""
    app = web.Application(middlewares=[_errors_as_json])

    async def page(request: web.Request) -> web.FileResponse:
        """The one page; a URL naming an unknown bot or user still gets it, with 404."""
        status = 200
        try:
            if "bot" in request.match_info:
                sandbox.bot(request.match_info["bot"])
            if "user" in request.match_info:
                sandbox.user(request.match_info["user"])
        except PageError as error:
            status = error.status
        return web.FileResponse(STATIC / "index.html", status=status)

    async def bots(request: web.Request) -> web.Response:
        return _json(await sandbox.statuses())

    async def users(request: web.Request) -> web.Response:
        return _json({"users": sandbox.users()})

    async def add_user(request: web.Request) -> web.Response:
        body = await _body(request)
        user = sandbox.add_user(body.get("first_name"))
        await sandbox.save_user(user)
        return _json(user.as_json(), status=201)

    async def chat(request: web.Request) -> web.Response:
        after = _optional_int(request.query, "after")
        wait = _seconds(request.query, "wait")
        return _json(await sandbox.chat(*_bot_and_user(request), after=after, wait=wait))

    async def send(request: web.Request) -> web.Response:
        body = await _body(request)
        return _json(sandbox.send(*_bot_and_user(request), body.get("text")))

    async def press(request: web.Request) -> web.Response:
        body = await _body(request)
        return _json(
            sandbox.press(
                *_bot_and_user(request), body.get("message_id"), body.get("callback_data")
            )
        )

    async def reset(request: web.Request) -> web.Response:
        return _json(await sandbox.reset(*_bot_and_user(request)))

    async def stream(request: web.Request) -> web.StreamResponse:
        return await _stream(sandbox, request)

    app.router.add_get("/", page)
    app.router.add_get("/bots/{bot}", page)
    app.router.add_get("/bots/{bot}/users/{user}", page)
    app.router.add_static("/static", STATIC, show_index=False)
    app.router.add_get("/api/bots", bots)
    app.router.add_get("/api/users", users)
    app.router.add_post("/api/users", add_user)
    app.router.add_get("/api/bots/{bot}/users/{user}/chat", chat)
    app.router.add_post("/api/bots/{bot}/users/{user}/messages", send)
    app.router.add_post("/api/bots/{bot}/users/{user}/buttons", press)
    app.router.add_post("/api/bots/{bot}/users/{user}/reset", reset)
    app.router.add_get("/api/stream", stream)
    return app


@web.middleware
async def _errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        if request.method == "POST" and request.content_type != "application/json":
            # Browsers send only JSON cross-site after a CORS preflight this server refuses.
            raise PageError(
                415, "send the request body as JSON, with Content-Type: application/json"
            )
        return await handler(request)
    except PageError as error:
        return _json({"error": error.message}, status=error.status)
    except web.HTTPException as error:
        if not request.path.startswith("/api/") or error.status < 400:
            raise
        return _json(
            {"error": f"{error.reason}: {request.method} {request.path} is not part of the API"},
            status=error.status,
        )


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.json_response(payload, status=status, dumps=dumps)


def _bot_and_user(request: web.Request) -> tuple[str, str]:
    return request.match_info["bot"], request.match_info["user"]


async def _body(request: web.Request) -> JSON:
    try:
        body = await request.json()
    except ValueError:
        raise PageError(400, "the request body must be a JSON object") from None
    if not isinstance(body, dict):
        raise PageError(400, "the request body must be a JSON object")
    return body


def _optional_int(query: Any, name: str) -> int | None:
    value = query.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise PageError(400, f"{name!r} must be an integer (a message id), not {value!r}") from None


def _seconds(query: Any, name: str) -> float:
    value = query.get(name, "0")
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= MAX_WAIT:
        raise PageError(400, f"{name!r} must be a number of seconds from 0 to {MAX_WAIT:.0f}")
    return seconds


async def _stream(sandbox: Sandbox, request: web.Request) -> web.StreamResponse:
    """Server-sent events: ``bots`` (the bot list), ``chat`` (the chosen chat and FSM
    record) and ``problem`` (why the chosen chat cannot be shown), each sent when it changed.

    The emulator announces what bots send; FSM records and counters change in
    the database and the runners, so they are re-read every :data:`REFRESH` seconds.
    """
    bot, user = request.query.get("bot"), request.query.get("user")
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    loop = asyncio.get_running_loop()
    sent: dict[str, str] = {}
    last_write = loop.time()
    with sandbox.emulator.subscribe(maxsize=100) as subscription:
        while not subscription.closed and not _gone(request):
            payloads: dict[str, Any] = {"bots": await sandbox.statuses()}
            if bot is not None and user is not None:
                try:
                    payloads["chat"] = await sandbox.chat(bot, user)
                except PageError as error:
                    payloads["problem"] = {"error": error.message}
            chunks = []
            for event, payload in payloads.items():
                data = dumps(payload)
                if sent.get(event) != data:
                    sent[event] = data
                    chunks.append(f"event: {event}\ndata: {data}\n\n")
            if not chunks and loop.time() - last_write > KEEPALIVE:
                chunks.append(": keepalive\n\n")
            if chunks:
                try:
                    await response.write("".join(chunks).encode())
                except ConnectionError:
                    break
                last_write = loop.time()
            await next_event(subscription)
    return response


def _gone(request: web.Request) -> bool:
    return request.transport is None or request.transport.is_closing()


async def next_event(subscription: Subscription) -> EmulatorEvent | None:
    """The emulator's next event, or ``None`` after :data:`REFRESH` seconds without one."""
    with contextlib.suppress(TimeoutError, StopAsyncIteration):
        async with asyncio.timeout(REFRESH):
            return await subscription.get()
    return None
