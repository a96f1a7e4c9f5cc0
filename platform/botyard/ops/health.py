"""Liveness and readiness: what ``/healthz`` and ``/readyz`` answer.

``/healthz`` only says the process answers HTTP. ``/readyz`` says whether the
process does its job: MongoDB answers a ping, and every enabled bot is running
(or was deliberately stopped: disabled in the registry). With replicas,
"every bot" is this replica's share: it is ready once it joined and started
its share, and the other bots show as ``elsewhere``. The JSON lists each
bot with its status and nothing else: no token, no secret, no error text
(error messages can quote URLs, which for the Bot API contain tokens).
"""

from __future__ import annotations

import asyncio
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from botyard.runtime.runner import BotStatus
from botyard.runtime.view import PlatformView

__all__ = ["PING_TIMEOUT", "Readiness"]

#: A probe must answer well within a typical probe timeout, even with MongoDB gone.
PING_TIMEOUT = 2.0


class Readiness:
    """Checks the database and the bots of the registry in force."""

    def __init__(self, database: AsyncDatabase[dict[str, Any]], platform: PlatformView) -> None:
        self._database = database
        self._platform = platform

    async def check(self) -> tuple[bool, dict[str, Any]]:
        """``(ready, body)``; the body is safe to show to anyone who can reach the port."""
        mongodb = await self._ping()
        runners = self._platform.runners
        share = self._platform.share
        bots = []
        for bot in self._platform.registry.bots:
            runner = runners.get(bot.name)
            if not bot.enabled:
                status, ok = "disabled", True
            elif share is None or bot.name not in share:
                status, ok = "elsewhere", share is not None
            elif runner is None:
                status, ok = "not_started", False
            else:
                status, ok = runner.status.value, runner.status == BotStatus.RUNNING
            bots.append({"name": bot.name, "mode": bot.mode, "status": status, "ready": ok})
        stopping = self._platform.stopping
        ready = mongodb == "ok" and not stopping and all(bot["ready"] for bot in bots)
        body = {
            "ready": ready,
            "stopping": stopping,
            "mongodb": mongodb,
            "bots": bots,
        }
        if self._platform.registry.cluster is not None:
            body["joined"] = share is not None
        return ready, body

    async def _ping(self) -> str:
        try:
            async with asyncio.timeout(PING_TIMEOUT):
                await self._database.command("ping")
        except TimeoutError:
            return f"unreachable (no answer within {PING_TIMEOUT:.0f}s)"
        except PyMongoError as error:
            return f"unreachable ({type(error).__name__})"
        return "ok"
