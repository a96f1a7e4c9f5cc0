"""The HTTP control API under ``/_emulator``: the Python control API for other processes.

End-to-end tests that run ``botyard run`` as a subprocess, or an emulator
started with ``python -m botyard.emulator``, are driven through these routes.
``{bot}`` is a token, a bot id or a username. ``/faults`` and
``/flood_limits`` make the Bot API misbehave (see
:meth:`BotAPIEmulator.add_fault`). Answers are JSON; errors are
``{"error": "..."}`` with 400 (bad input), 404 (unknown bot), 408 (a wait
timed out) or 503 (the emulator is stopping).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from botyard.emulator.errors import ControlError
from botyard.emulator.faults import FloodLimits
from botyard.emulator.state import JSON, EmulatedBot

if TYPE_CHECKING:
    from botyard.emulator.emulator import BotAPIEmulator

PREFIX = "/_emulator"

Handler = Callable[[web.Request], Awaitable[Any]]


def _summary(bot: EmulatedBot) -> JSON:
    return {
        "token": bot.token,
        "id": bot.id,
        "username": bot.username,
        "first_name": bot.first_name,
        "revoked": bot.revoked,
    }


def _integer(source: Mapping[str, Any], name: str, default: int | None = None) -> int:
    value = source.get(name, default)
    if value is None:
        raise ControlError(f"{name!r} is required (an integer)")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ControlError(f"{name!r} must be an integer, not {value!r}") from None


def _optional_integer(source: Mapping[str, Any], name: str) -> int | None:
    return None if source.get(name) is None else _integer(source, name)


def _number(source: Mapping[str, Any], name: str, default: float) -> float:
    value = source.get(name, default)
    if isinstance(value, bool):
        raise ControlError(f"{name!r} must be a number, not {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ControlError(f"{name!r} must be a number, not {value!r}") from None


def _string(source: Mapping[str, Any], name: str) -> str:
    value = source.get(name)
    if not isinstance(value, str):
        raise ControlError(f"{name!r} is required (a string)")
    return value


def _optional_string(source: Mapping[str, Any], name: str) -> str | None:
    value = source.get(name)
    if value is not None and not isinstance(value, str):
        raise ControlError(f"{name!r} must be a string, not {value!r}")
    return value


async def _body(request: web.Request) -> JSON:
    if not request.body_exists:
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise ControlError("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ControlError("the request body must be a JSON object")
    return body


def _json_route(handler: Handler) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Serialise the handler's result; turn control errors into JSON error answers."""

    async def route(request: web.Request) -> web.Response:
        try:
            result = await handler(request)
        except ControlError as exc:
            return web.json_response({"error": str(exc)}, status=exc.status)
        except TimeoutError as exc:
            return web.json_response({"error": str(exc)}, status=408)
        return web.json_response(result)

    return route


def add_control_routes(app: web.Application, emulator: BotAPIEmulator) -> None:
    """Mount the control API of ``emulator`` on ``app``."""

    def bot_of(request: web.Request) -> EmulatedBot:
        return emulator.bot(request.match_info["bot"])

    async def health(request: web.Request) -> JSON:
        return {"ok": True, "url": emulator.url, "bots": len(emulator.bots)}

    async def list_bots(request: web.Request) -> list[JSON]:
        return [_summary(bot) for bot in emulator.bots]

    async def add_bot(request: web.Request) -> JSON:
        body = await _body(request)
        bot = emulator.add_bot(
            _optional_string(body, "username"),
            _optional_string(body, "token"),
            first_name=_optional_string(body, "first_name"),
        )
        return _summary(bot)

    async def show_bot(request: web.Request) -> JSON:
        bot = bot_of(request)
        return {
            **_summary(bot),
            "webhook_info": bot.webhook_info(),
            "confirmed_offset": bot.confirmed_offset,
            "pending_update_count": len(bot.pending),
        }

    async def revoke(request: web.Request) -> JSON:
        bot = bot_of(request)
        emulator.revoke(bot.token)
        return _summary(bot)

    async def add_user(request: web.Request) -> JSON:
        body = await _body(request)
        user = emulator.user(
            _integer(body, "user_id"),
            _optional_string(body, "first_name"),
            _optional_string(body, "username"),
            last_name=_optional_string(body, "last_name"),
            language_code=_optional_string(body, "language_code"),
        )
        return user.as_json()

    async def send_message(request: web.Request) -> JSON:
        body = await _body(request)
        return emulator.send_message(
            bot_of(request).token,
            _integer(body, "user_id"),
            _string(body, "text"),
            chat_id=_optional_integer(body, "chat_id"),
        )

    async def press_button(request: web.Request) -> JSON:
        body = await _body(request)
        return emulator.press_button(
            bot_of(request).token,
            _integer(body, "user_id"),
            _integer(body, "message_id"),
            _string(body, "callback_data"),
            chat_id=_optional_integer(body, "chat_id"),
        )

    async def sent(request: web.Request) -> JSON:
        chat_id = _optional_integer(request.query, "chat_id")
        return {"messages": emulator.sent_messages(bot_of(request).token, chat_id)}

    async def replies(request: web.Request) -> JSON:
        query = request.query
        count = _integer(query, "count", 1)
        try:
            timeout = float(query.get("timeout", "10"))
        except ValueError:
            raise ControlError("'timeout' must be a number of seconds") from None
        found = await emulator.wait_for_reply(
            bot_of(request).token,
            _integer(query, "chat_id"),
            count=count,
            timeout=timeout,
            after_message_id=_optional_integer(query, "after_message_id"),
            text=_optional_string(query, "text"),
        )
        return {"messages": found if isinstance(found, list) else [found]}

    async def updates(request: web.Request) -> JSON:
        bot = bot_of(request)
        return {
            "pending": emulator.pending_updates(bot.token),
            "confirmed_offset": bot.confirmed_offset,
        }

    async def deliveries(request: web.Request) -> JSON:
        attempts = emulator.delivery_attempts(bot_of(request).token)
        return {"attempts": [dataclasses.asdict(attempt) for attempt in attempts]}

    async def calls(request: web.Request) -> JSON:
        return {"calls": dict(bot_of(request).calls)}

    async def faults(request: web.Request) -> JSON:
        return {"faults": [fault.as_json() for fault in emulator.faults]}

    async def add_fault(request: web.Request) -> JSON:
        body = await _body(request)
        methods = body.get("methods")
        if methods is not None and not (
            isinstance(methods, str)
            or (isinstance(methods, list) and all(isinstance(m, str) for m in methods))
        ):
            raise ControlError("'methods' must be a method name or a list of them")
        bot = body.get("bot")
        if bot is not None and not isinstance(bot, str | int):
            raise ControlError("'bot' must be a token, a bot id or a username")
        probability = body.get("probability")
        fault = emulator.add_fault(
            _string(body, "kind"),
            methods=methods,
            bot=bot,
            chat_id=_optional_integer(body, "chat_id"),
            every=_optional_integer(body, "every"),
            probability=None if probability is None else _number(body, "probability", 0.0),
            seed=_optional_integer(body, "seed"),
            retry_after=_integer(body, "retry_after", 1),
            status=_integer(body, "status", 502),
            hang=_number(body, "hang", 65.0),
            times=_optional_integer(body, "times"),
        )
        return fault.as_json()

    async def clear_faults(request: web.Request) -> JSON:
        removed = len(emulator.faults)
        emulator.clear_faults()
        return {"removed": removed}

    async def remove_fault(request: web.Request) -> JSON:
        emulator.remove_fault(_integer(request.match_info, "id"))
        return {"removed": 1}

    async def flood_limits(request: web.Request) -> JSON:
        limits = emulator.flood_limits
        return {"flood_limits": limits.as_json() if limits is not None else None}

    async def enforce_flood_limits(request: web.Request) -> JSON:
        body = await _body(request)
        default = FloodLimits()
        limits = emulator.enforce_flood_limits(
            FloodLimits(
                per_bot=_number(body, "per_bot", default.per_bot),
                per_chat=_number(body, "per_chat", default.per_chat),
                per_group=_number(body, "per_group", default.per_group),
                burst=_integer(body, "burst", default.burst),
                tolerance=_number(body, "tolerance", default.tolerance),
            )
        )
        return {"flood_limits": limits.as_json()}

    async def lift_flood_limits(request: web.Request) -> JSON:
        emulator.lift_flood_limits()
        return {"flood_limits": None}

    async def fault_counts(request: web.Request) -> JSON:
        return emulator.fault_counts(bot_of(request).token)

    routes: list[tuple[str, str, Handler]] = [
        ("GET", "", health),
        ("GET", "/bots", list_bots),
        ("POST", "/bots", add_bot),
        ("GET", "/bots/{bot}", show_bot),
        ("POST", "/bots/{bot}/revoke", revoke),
        ("POST", "/users", add_user),
        ("POST", "/bots/{bot}/messages", send_message),
        ("POST", "/bots/{bot}/buttons", press_button),
        ("GET", "/bots/{bot}/sent", sent),
        ("GET", "/bots/{bot}/replies", replies),
        ("GET", "/bots/{bot}/updates", updates),
        ("GET", "/bots/{bot}/deliveries", deliveries),
        ("GET", "/bots/{bot}/calls", calls),
        ("GET", "/bots/{bot}/faults", fault_counts),
        ("GET", "/faults", faults),
        ("POST", "/faults", add_fault),
        ("DELETE", "/faults", clear_faults),
        ("DELETE", "/faults/{id}", remove_fault),
        ("GET", "/flood_limits", flood_limits),
        ("PUT", "/flood_limits", enforce_flood_limits),
        ("DELETE", "/flood_limits", lift_flood_limits),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, PREFIX + path, _json_route(handler))
