"""HTTP sessions shared by many bots, sized so long polls never starve.

Every polling bot holds one connection open for its long poll, so aiogram's
default of 100 connections per session starves past 100 bots, while a session
per bot costs about 0.7 MB each. Bots are packed into shared sessions of a fixed
capacity, one group per Bot API server (a session talks to one server).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import PRODUCTION, TelegramAPIServer

#: Bots per shared session; each gets two connections (its long poll plus a reply).
BOTS_PER_SESSION = 500
CONNECTIONS_PER_BOT = 2
SPARE_CONNECTIONS = 50


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
            session = AiohttpSession(
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
