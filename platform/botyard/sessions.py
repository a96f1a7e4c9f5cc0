"""HTTP sessions shared by many bots, sized so long polls never starve.

Every polling bot holds one connection open for its long poll, so aiogram's
default of 100 connections per session starves past 100 bots, while a session
per bot costs about 0.7 MB each. Bots are packed into shared sessions of a fixed
capacity, one group per Bot API server (a session talks to one server).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import PRODUCTION, TelegramAPIServer
from aiogram.methods import Response, TelegramMethod
from aiogram.methods.base import TelegramType

#: Bots per shared session; each gets two connections (its long poll plus a reply).
BOTS_PER_SESSION = 500
CONNECTIONS_PER_BOT = 2
SPARE_CONNECTIONS = 50


#: Strong references to the response models built so far, keyed by the type returned.
_RESPONSE_MODELS: dict[Any, type[Response[Any]]] = {}


class PinnedResponseSession(AiohttpSession):
    """aiogram's session, keeping alive the pydantic model it validates each answer with.

    aiogram validates every answer with ``Response[method.__returning__]``, a generic
    model that pydantic caches only weakly: after each full garbage collection it is
    built again, about 10 ms of schema generation per method type, which under load
    was 8% of the platform's CPU. Holding one reference per returned type makes
    every later lookup a cache hit.
    """

    def check_response(
        self,
        bot: Bot,
        method: TelegramMethod[TelegramType],
        status_code: int,
        content: str,
    ) -> Response[TelegramType]:
        returning = method.__returning__
        try:
            if returning not in _RESPONSE_MODELS:
                _RESPONSE_MODELS[returning] = Response[returning]  # type: ignore[valid-type]
        except TypeError:  # an unhashable return type: nothing to keep, nothing lost
            pass
        return super().check_response(bot, method, status_code, content)


@dataclass
class _Shared:
    session: AiohttpSession
    bots: set[str] = field(default_factory=set)


class SessionPool:
    """Hands out shared :class:`AiohttpSession` objects, one seat per bot name."""

    def __init__(self, bots_per_session: int = BOTS_PER_SESSION) -> None:
        self._bots_per_session = bots_per_session
        self._groups: dict[str | None, list[_Shared]] = {}
        self._seats: dict[str, _Shared] = {}

    def acquire(self, bot_name: str, api_server: str | None) -> AiohttpSession:
        """A session for ``bot_name`` talking to ``api_server`` (``None``: Telegram)."""
        if bot_name in self._seats:
            raise RuntimeError(f"bot {bot_name!r} already holds a session")
        group = self._groups.setdefault(api_server, [])
        shared = next((s for s in group if len(s.bots) < self._bots_per_session), None)
        if shared is None:
            api = TelegramAPIServer.from_base(api_server) if api_server else PRODUCTION
            session = PinnedResponseSession(
                api=api,
                limit=self._bots_per_session * CONNECTIONS_PER_BOT + SPARE_CONNECTIONS,
            )
            shared = _Shared(session)
            group.append(shared)
        shared.bots.add(bot_name)
        self._seats[bot_name] = shared
        return shared.session

    async def release(self, bot_name: str) -> None:
        """Give up ``bot_name``'s seat; a session nobody uses any more is closed."""
        shared = self._seats.pop(bot_name, None)
        if shared is None:
            return
        shared.bots.discard(bot_name)
        if not shared.bots:
            for group in self._groups.values():
                if shared in group:
                    group.remove(shared)
            await shared.session.close()

    async def close(self) -> None:
        for group in self._groups.values():
            for shared in group:
                await shared.session.close()
        self._groups.clear()
        self._seats.clear()
