"""An in-process botyard: the real Supervisor, its HTTP server, the emulator and the database.

Used by the webhook and metrics tests, which need to look inside the running
process (runner counters, the metrics registry) while it serves real HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
from pymongo import AsyncMongoClient

from botyard.database.embedded import free_port
from botyard.database.server_time import server_now
from botyard.emulator import BotAPIEmulator
from botyard.registry.loader import load_registry
from botyard.runtime.runner import BotStatus
from botyard.runtime.supervisor import Supervisor
from botyard.webhook.journal import DEAD_AFTER, UpdateJournal

TEST_BOT = '''
"""Test bot: echo, a failing handler, a slow one and one that blocks the event loop."""
import asyncio
import time

from aiogram import F, Router
from aiogram.fsm.context import FSMContext
from aiogram.types import Message


def synchronous_driver_call() -> None:
    time.sleep(0.4)  # a blocking call: every bot in the process waits


def router() -> Router:
    bot = Router()

    @bot.message(F.text == "block")
    async def block_the_loop(message: Message) -> None:
        synchronous_driver_call()
        await message.answer("unblocked")

    @bot.message(F.text == "poison")
    async def poison(message: Message) -> None:
        raise ValueError("cannot digest")

    @bot.message(F.text == "remember")
    async def remember(message: Message, state: FSMContext) -> None:
        await state.set_state("Test:remembered")
        await message.answer("remembered")

    @bot.message(F.text.startswith("slow"))
    async def slow(message: Message) -> None:
        await asyncio.sleep(float((message.text or "").split()[1]))
        await message.answer(f"done {message.text}")

    @bot.message(F.text)
    async def echo(message: Message) -> None:
        await message.answer(message.text or "")

    return bot
'''


async def wait_until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - polling plain attributes
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def open_yard(
    directory: Path, emulator: BotAPIEmulator, mongo_uri: str, database: str
) -> AsyncIterator[Yard]:
    """A :class:`Yard`, stopped (if still running) and its database dropped afterwards."""
    yard = Yard(directory, emulator, mongo_uri, database)
    try:
        yield yard
    finally:
        if yard.supervisor is not None and not yard.supervisor.stopping:
            await yard.stop()
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri)
        await client.drop_database(database)
        await client.close()


class Yard:
    """A registry in ``directory`` whose bots talk to ``emulator``, run by a Supervisor."""

    def __init__(
        self, directory: Path, emulator: BotAPIEmulator, mongo_uri: str, database: str
    ) -> None:
        self.directory = directory
        self.emulator = emulator
        self.mongo_uri = mongo_uri
        self.database = database
        self.module = f"yardbot_{uuid.uuid4().hex[:8]}"
        (directory / f"{self.module}.py").write_text(TEST_BOT)
        self.tokens: dict[str, str] = {}
        self.modes: dict[str, str] = {}
        self.path = directory / "botyard.yaml"
        self.supervisor: Supervisor | None = None
        self._task: asyncio.Task[int] | None = None

    def add(self, name: str, mode: str = "webhook", routers: str | None = None) -> str:
        """Register a bot with the emulator; returns its token."""
        self.tokens[name] = self.emulator.add_bot(f"{name}_{uuid.uuid4().hex[:6]}").token
        self.modes[name] = (
            f"    mode: {mode}\n    routers: [{routers or self.module + ':router'}]\n"
        )
        return self.tokens[name]

    def write(
        self,
        *,
        webhook: bool = True,
        ops: bool = False,
        max_connections: int = 40,
        webhook_extra: str = "",
        per_bot_metrics: str | None = None,
    ) -> None:
        port = free_port()
        text = f"storage:\n  uri: {self.mongo_uri}\n  database: {self.database}\n"
        if webhook:
            text += (
                f"webhook:\n  base_url: http://127.0.0.1:{port}\n"
                f"  listen: 127.0.0.1:{port}\n  max_connections: {max_connections}\n"
                + webhook_extra
            )
        if ops:
            text += "ops:\n  listen: 127.0.0.1:0\n"
        if per_bot_metrics is not None:
            text += f"metrics:\n  per_bot: {per_bot_metrics}\n"
        text += "bots:\n"
        for name, token in self.tokens.items():
            text += f"  - name: {name}\n    token: {token}\n    api_server: {self.emulator.url}\n"
            text += self.modes[name]
        self.path.write_text(text)

    async def start(self, **options: Any) -> Supervisor:
        """Run the Supervisor until every bot runs and webhook bots have their webhook."""
        supervisor = Supervisor(load_registry(self.path), watch=False, **options)
        self.supervisor = supervisor
        self._task = asyncio.create_task(supervisor.run())

        def started() -> bool:
            if self._task is not None and self._task.done():
                self._task.result()  # raise what stopped it
            return len(supervisor.runners) == len(self.tokens) and all(
                runner.status == BotStatus.RUNNING for runner in supervisor.runners.values()
            )

        await wait_until(started, timeout=60)
        for name, token in self.tokens.items():
            if self.modes[name].startswith("    mode: webhook"):
                assert self.emulator.webhook_info(token)["url"], f"{name} has no webhook"
        return supervisor

    async def stop(self) -> int:
        assert self.supervisor is not None
        assert self._task is not None
        self.supervisor.request_stop()
        return await asyncio.wait_for(self._task, 120)

    @property
    def url(self) -> str:
        assert self.supervisor is not None
        assert self.supervisor.http is not None
        assert self.supervisor.http.url is not None
        return self.supervisor.http.url

    async def request(
        self, method: str, path: str, *, data: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, str]:
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, self.url + path, data=data, headers=headers) as response,
        ):
            return response.status, await response.text()

    async def collection_count(self, collection: str) -> int:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(self.mongo_uri)
        try:
            return await client[self.database][collection].count_documents({})
        finally:
            await client.close()


async def silence(journal: UpdateJournal) -> None:
    """Date ``journal``'s heartbeat (written when it journaled) back past DEAD_AFTER: its
    process is gone."""
    since = await server_now(journal.instances.database) - DEAD_AFTER - timedelta(seconds=1)
    await journal.instances.update_one({"_id": journal.instance}, {"$set": {"seen_at": since}})
