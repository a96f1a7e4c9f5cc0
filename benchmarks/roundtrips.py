"""Figure 1: database round trips per update, counted exactly with PyMongo's CommandListener.

Each contender's Dispatcher runs in this process on a client carrying a
:class:`~botyard.database.roundtrips.RoundTripCounter`, and real updates (injected at the
emulator, replies sent to it) are fed through ``Dispatcher.feed_update`` one at
a time. For botyard that is the Dispatcher of the platform's own
:class:`~botyard.runtime.runner.BotRunner`, built exactly as ``botyard run`` builds it,
with its ``BeanieStorage``: a count taken inside the ``botyard run`` subprocess
would need a listener injected into it, and would count the same calls. The
counts do not depend on the machine or the server.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from aiogram import Bot, Dispatcher, Router
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.types import Update
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from benchmarks.aiogram_app import make_storage
from benchmarks.harness import World
from bots import echo, questionnaire
from botyard.database.roundtrips import RoundTripCounter
from botyard.runtime.routers import BotRouters
from botyard.runtime.runner import BotRunner, BotSpec
from botyard.storage import BeanieStorage, prepare_database

#: What is measured: (label, bot, message). The questionnaire rows run in this order.
STEPS = (
    ("echo (no FSM use)", "echo", "hello"),
    ("/start", "questionnaire", "/start"),
    ("questionnaire step", "questionnaire", "red"),
    ("second step", "questionnaire", "cat"),
    ("last step", "questionnaire", "pizza"),
)
QUESTIONNAIRE_STEPS = ("/start", "questionnaire step", "second step", "last step")
AVERAGE = "whole questionnaire, per update"
USER = 424242

DispatcherFactory = Callable[[AsyncDatabase[Any], Router, str], Dispatcher]


def botyard_dispatcher(database: AsyncDatabase[Any], router: Router, name: str) -> Dispatcher:
    storage = BeanieStorage(database, name, state_ttl=timedelta(days=1))
    spec = BotSpec(
        name=name,
        token="1:unused",
        routers=BotRouters.of(router),
        storage=storage,
        workflow_data={"database": database},
    )
    return BotRunner(spec, Bot("1:unused")).dispatcher


def baseline_dispatcher(kind: str) -> DispatcherFactory:
    def build(database: AsyncDatabase[Any], router: Router, name: str) -> Dispatcher:
        dispatcher = Dispatcher(
            storage=make_storage(kind, database.client, database.name), database=database
        )
        dispatcher.include_router(router)
        return dispatcher

    return build


FACTORIES: dict[str, DispatcherFactory] = {
    "botyard": botyard_dispatcher,
    "floor": baseline_dispatcher("memory"),
    "aiogram-pymongo": baseline_dispatcher("pymongo"),
    "hand-written": baseline_dispatcher("handwritten"),
}


async def count_one(world: World, name: str, factory: DispatcherFactory) -> dict[str, float]:
    """Round trips of each step in :data:`STEPS` for one contender."""
    world.add_bots(2)
    tokens = {"echo": world.tokens[0], "questionnaire": world.tokens[1]}
    counter = RoundTripCounter()
    client: AsyncMongoClient[Any] = AsyncMongoClient(
        world.uri, tz_aware=True, event_listeners=[counter]
    )
    database = client[f"bench_rt_{name.replace('-', '_')}"]
    await client.drop_database(database.name)
    await prepare_database(database)
    await questionnaire.bind(database)  # once per process: not part of any step's count
    api = TelegramAPIServer.from_base(world.emulator.url)
    bots = {kind: Bot(token, session=AiohttpSession(api=api)) for kind, token in tokens.items()}
    dispatchers = {
        "echo": factory(database, echo.router(), "echo"),
        "questionnaire": factory(database, questionnaire.router(), "questionnaire"),
    }
    counts: dict[str, float] = {}
    try:
        for label, kind, text in STEPS:
            update = world.emulator.send_message(tokens[kind], USER, text)
            counter.reset()
            await dispatchers[kind].feed_update(bots[kind], Update.model_validate(update))
            if counter.failures:
                raise RuntimeError(f"{name}: {counter.failures} command(s) failed at {label!r}")
            counts[label] = counter.total
            await world.emulator.wait_for_reply(tokens[kind], USER, timeout=10)
    finally:
        for bot in bots.values():
            await bot.session.close()
        await client.drop_database(database.name)
        await client.close()
    whole = sum(counts[step] for step in QUESTIONNAIRE_STEPS)
    counts[AVERAGE] = whole / len(QUESTIONNAIRE_STEPS)
    return counts


async def measure(world: World) -> dict[str, Any]:
    """Round trips per step and contender."""
    results = {name: await count_one(world, name, factory) for name, factory in FACTORIES.items()}
    return {"steps": [*(label for label, _, _ in STEPS), AVERAGE], "counts": results}
