"""The HTTP face of the emulator: Bot API routes in Telegram's URL shape, plus control routes.

``{base}/bot{token}/{method}`` is what aiogram's ``TelegramAPIServer.from_base``
builds; GET and POST are both answered, as Telegram does.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from aiohttp import web

from botyard.emulator.control import add_control_routes
from botyard.emulator.errors import BotAPIError
from botyard.emulator.faults import DropConnection
from botyard.emulator.params import read_request_params

if TYPE_CHECKING:
    from botyard.emulator.emulator import BotAPIEmulator

logger = logging.getLogger(__name__)


def _dropped(request: web.Request) -> web.Response:
    """Close the connection under the request, so the client gets no answer at all."""
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=204)


def build_app(emulator: BotAPIEmulator) -> web.Application:
    """The aiohttp application serving ``emulator``."""

    async def bot_api(request: web.Request) -> web.Response:
        method = request.match_info["method"]
        try:
            params = await read_request_params(request)
            result = await emulator.execute(
                request.match_info["token"], method, params, faults=True
            )
        except BotAPIError as exc:
            if exc.error_code == 409 and request.transport is not None:
                # Counted only when someone hears it: a poll the bot abandoned
                # (cancelled at stop) ends with a 409 nobody reads.
                emulator.count_conflict(request.match_info["token"])
            return web.json_response(exc.as_json(), status=exc.error_code)
        except DropConnection as drop:
            if drop.hang:
                await asyncio.sleep(drop.hang)
            return _dropped(request)
        except Exception:
            # Answer like Telegram's 500 so the bot sees a server error, not a decode error.
            logger.exception("emulator failed on %s", method)
            error = BotAPIError(500, "Internal Server Error")
            return web.json_response(error.as_json(), status=500)
        return web.json_response({"ok": True, "result": result})

    app = web.Application()
    app.router.add_route("*", "/bot{token}/{method}", bot_api)
    add_control_routes(app, emulator)
    return app
