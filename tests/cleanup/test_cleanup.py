"""The cleanup of stale FSM state: the sweep, its schedule in a running supervisor, the CLI.

Time is virtual: one clock, 30 days ahead of the real one, drives both the
storage's writes and the sweep. Every ``purge_at`` the tests produce is
therefore in the real future, so the server's own TTL monitor (SecantusDB runs
one every minute, as MongoDB does) can never remove a record before the sweep.
tests/end_to_end/test_e2e_expiry.py shows, on the real clock, that the backstop's
grace leaves the sweep its chance.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import pty
import re
import select
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiogram import Bot
from aiogram.fsm.storage.base import StorageKey
from click.testing import CliRunner
from pymongo import AsyncMongoClient, MongoClient, monitoring
from pymongo.asynchronous.database import AsyncDatabase

from botyard.cleanup.schedule import misfire_grace_time
from botyard.cleanup.sweep import Sweeper, backstop_grace
from botyard.cli import main
from botyard.cli.options import CommandEnvironment
from botyard.database.documents import Document
from botyard.database.embedded import free_port
from botyard.database.roundtrips import DRIVER_COMMANDS
from botyard.emulator import BotAPIEmulator, EmulatorThread
from botyard.registry.loader import load_registry
from botyard.registry.models import BotConfig, CleanupConfig, RegistryError
from botyard.runtime.supervisor import Supervisor
from botyard.storage import COLLECTION_NAME, BeanieStorage, prepare_database, update_scope
from botyard.storage.records import FSMRecords, realign_filter, stale_filter

from e2e import REPO

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


# --- time, records, bots -----------------------------------------------------------


class Clock:
    """The virtual "now" of the storage and the sweep."""

    def __init__(self) -> None:
        real = datetime.now(UTC) + timedelta(days=30)
        self.now = real.replace(microsecond=real.microsecond // 1000 * 1000)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@pytest.fixture
def clock() -> Clock:
    """Given to every storage, sweeper, supervisor and command of a test."""
    return Clock()


def record(
    namespace: str,
    chat: int,
    *,
    now: datetime,
    idle: timedelta,
    ttl: timedelta | None,
    state: str | None = "Quiz:q1",
    data: Document | None = None,
) -> Document:
    """A record as BeanieStorage writes it: idle for ``idle`` under ``ttl``."""
    updated = now - idle
    return {
        "namespace": namespace,
        "chat_id": chat,
        "user_id": chat,
        "thread_id": None,
        "business_connection_id": None,
        "destiny": "default",
        "bot_id": 42,
        "state": state,
        "data": {"answer": chat} if data is None else data,
        "updated_at": updated,
        "expires_at": None if ttl is None else updated + ttl,
        "purge_at": None if ttl is None else updated + ttl,
    }


def bot_config(name: str, ttl: str = "1h", **fields: Any) -> BotConfig:
    return BotConfig.model_validate(
        {"name": name, "routers": ["x:router"], "state_ttl": ttl, **fields},
        context={"require_tokens": False},
    )


class CommandLog(monitoring.CommandListener):
    """Every command the application sent, with its body."""

    def __init__(self) -> None:
        self.commands: list[Document] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name not in DRIVER_COMMANDS:
            self.commands.append({"name": event.command_name, **event.command})

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture
async def listened(mongo_uri: str) -> AsyncIterator[tuple[AsyncMongoClient[Any], CommandLog]]:
    log = CommandLog()
    client: AsyncMongoClient[Any] = AsyncMongoClient(
        mongo_uri, tz_aware=True, event_listeners=[log]
    )
    try:
        yield client, log
    finally:
        await client.close()


@pytest.fixture
async def database(
    listened: tuple[AsyncMongoClient[Any], CommandLog], database_name: str
) -> AsyncIterator[AsyncDatabase[Document]]:
    client, log = listened
    await prepare_database(client[database_name])
    log.commands.clear()
    yield client[database_name]
    await client.drop_database(database_name)


@pytest.fixture
def commands(listened: tuple[AsyncMongoClient[Any], CommandLog]) -> list[Document]:
    return listened[1].commands


async def chats(database: AsyncDatabase[Document], namespace: str) -> list[int]:
    found = database[COLLECTION_NAME].find({"namespace": namespace}, {"chat_id": 1})
    return sorted([document["chat_id"] async for document in found])


def sweeper(
    database: AsyncDatabase[Document], tmp_path: Path, clock: Clock, **options: Any
) -> Sweeper:
    return Sweeper(database, base_dir=tmp_path, clock=clock, **options)


def write_module(directory: Path, prefix: str, source: str) -> str:
    """A uniquely named module in ``directory``; returns its name."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    (directory / f"{name}.py").write_text(textwrap.dedent(source))
    return name


# --- the sweep ---------------------------------------------------------------------


async def test_stale_records_go_and_live_ones_stay_by_each_bots_ttl(
    database: AsyncDatabase[Document],
    clock: Clock,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = clock.now
    hourly, daily, forever = (
        bot_config("hourly", "1h"),
        bot_config("daily", "1d"),
        bot_config("forever", "never"),
    )
    seeded = [
        *(record("hourly", chat, now=now, idle=2 * HOUR, ttl=HOUR) for chat in (1, 2, 3)),
        *(record("hourly", chat, now=now, idle=timedelta(minutes=50), ttl=HOUR) for chat in (4, 5)),
        *(record("daily", chat, now=now, idle=2 * HOUR, ttl=DAY) for chat in (1, 2)),
        *(record("daily", chat, now=now, idle=2 * DAY, ttl=DAY) for chat in (3,)),
        *(record("forever", chat, now=now, idle=400 * DAY, ttl=None) for chat in (1, 2)),
    ]
    await database[COLLECTION_NAME].insert_many(seeded)
    with caplog.at_level(logging.INFO, logger="botyard.cleanup"):
        results = await sweeper(database, tmp_path, clock).run([hourly, daily, forever])
    assert [(r.bot, r.removed, r.error) for r in results] == [
        ("hourly", 3, None),
        ("daily", 1, None),
        ("forever", 0, None),
    ]
    assert await chats(database, "hourly") == [4, 5]
    assert await chats(database, "daily") == [1, 2]
    assert await chats(database, "forever") == [1, 2]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("cleanup bot=")]
    assert re.fullmatch(r"cleanup bot=hourly removed=3 in \d+\.\d\ds", lines[0])
    assert re.fullmatch(r"cleanup bot=daily removed=1 in \d+\.\d\ds", lines[1])
    assert re.fullmatch(r"cleanup bot=forever removed=0 in \d+\.\d\ds", lines[2])


async def test_a_shrunk_ttl_applies_at_the_next_sweep(
    database: AsyncDatabase[Document], clock: Clock, tmp_path: Path
) -> None:
    week = BeanieStorage(database, "shop", state_ttl=timedelta(days=7), clock=clock)
    old, recent = StorageKey(42, 1, 1), StorageKey(42, 2, 2)
    await week.set_state(old, "Order:address")
    clock.advance(2 * HOUR)
    await week.set_state(recent, "Order:address")
    [written] = await database[COLLECTION_NAME].find({"chat_id": 1}).to_list()
    assert written["expires_at"] > clock.now + 6 * DAY, "written under the old 7-day TTL"

    [result] = await sweeper(database, tmp_path, clock).run([bot_config("shop", "1h")])

    assert result.removed == 1
    assert await chats(database, "shop") == [2]


async def test_a_grown_ttl_or_never_keeps_records_and_realigns_their_expiry(
    database: AsyncDatabase[Document], clock: Clock, tmp_path: Path
) -> None:
    hourly = BeanieStorage(database, "grows", state_ttl=HOUR, clock=clock)
    for chat in (1, 2):
        await hourly.set_state(StorageKey(42, chat, chat), "Quiz:q1")
    await BeanieStorage(database, "stops", state_ttl=HOUR, clock=clock).set_state(
        StorageKey(42, 1, 1), "Q:a"
    )
    clock.advance(timedelta(minutes=70))  # past the old expiry of every record
    tool = sweeper(database, tmp_path, clock, horizon=timedelta(minutes=30))

    grown, stopped = await tool.run([bot_config("grows", "1d"), bot_config("stops", "never")])

    assert (grown.removed, grown.realigned) == (0, 2)
    assert (stopped.removed, stopped.realigned) == (0, 1)
    async for document in database[COLLECTION_NAME].find({"namespace": "grows"}):
        assert document["expires_at"] == document["purge_at"] == document["updated_at"] + DAY
    [kept] = await database[COLLECTION_NAME].find({"namespace": "stops"}).to_list()
    assert kept["purge_at"] is None, "MongoDB's TTL index must not remove it either"
    assert kept["expires_at"] is None
    again = await tool.run([bot_config("grows", "1d"), bot_config("stops", "never")])
    assert [(r.removed, r.realigned) for r in again] == [(0, 0), (0, 0)]


async def test_the_backstop_waits_two_schedule_periods_and_follows_a_longer_schedule(
    database: AsyncDatabase[Document], clock: Clock, tmp_path: Path
) -> None:
    assert backstop_grace(CleanupConfig(schedule="2m")) == timedelta(minutes=6)
    assert backstop_grace(CleanupConfig(schedule="*/10 * * * *")) == timedelta(minutes=22)
    storage = BeanieStorage(
        database, "quiz", state_ttl=HOUR, ttl_grace=timedelta(minutes=6), clock=clock
    )
    await storage.set_state(StorageKey(42, 1, 1), "Quiz:q1")
    clock.advance(timedelta(minutes=50))  # the backstop (66 min) is within the new horizon
    grace = timedelta(minutes=22)  # the schedule went from 2 to 10 minutes
    tool = sweeper(database, tmp_path, clock, horizon=grace, grace=grace)

    [result] = await tool.run([bot_config("quiz", "1h")])

    assert (result.removed, result.realigned) == (0, 1)
    [document] = await database[COLLECTION_NAME].find({"namespace": "quiz"}).to_list()
    assert document["expires_at"] == document["updated_at"] + HOUR, "what users see is unchanged"
    assert document["purge_at"] == document["expires_at"] + grace
    [again] = await tool.run([bot_config("quiz", "1h")])
    assert again.realigned == 0


async def test_read_only_activity_keeps_a_conversation_alive_with_the_write_throttle(
    database: AsyncDatabase[Document],
    commands: list[Document],
    clock: Clock,
    tmp_path: Path,
) -> None:
    storage = BeanieStorage(database, "quiz", state_ttl=HOUR, clock=clock)
    reader, silent = StorageKey(42, 1, 1), StorageKey(42, 2, 2)
    await storage.set_state(reader, "Quiz:q2")
    await storage.set_state(silent, "Quiz:q2")
    tool = sweeper(database, tmp_path, clock)
    bot = bot_config("quiz", "1h")
    refreshes = reads = 0
    silent_gone_after = None
    for step in range(1, 37):  # three hours, a read every five minutes
        clock.advance(timedelta(minutes=5))
        commands.clear()
        async with update_scope():
            assert await storage.get_state(reader) == "Quiz:q2"
        reads += 1
        refreshes += sum(command["name"] == "update" for command in commands)
        await tool.run([bot])
        if silent_gone_after is None and await chats(database, "quiz") == [1]:
            silent_gone_after = step * 5
    assert await chats(database, "quiz") == [1], "the reading user's state survived 3 hours"
    assert silent_gone_after == 60, "the silent user's state went when its hour was up"
    # A tenth of the TTL is 6 minutes: every other read refreshes, never two in a row.
    assert (reads, refreshes) == (36, 18)


async def test_hook_gets_bot_key_state_and_data_before_removal_and_failures_are_tolerated(
    database: AsyncDatabase[Document],
    clock: Clock,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    module = write_module(
        tmp_path,
        "expiry_hook",
        """
        CALLS = []
        COLLECTION = None

        async def on_expired(bot, key, state, data):
            still_there = await COLLECTION.count_documents({"chat_id": key.chat_id})
            CALLS.append((bot, key, state, data, still_there))
            if key.chat_id == 2:
                raise RuntimeError("cannot reach the user")
        """,
    )
    collection = database[COLLECTION_NAME]
    await collection.insert_many(
        [
            record("quiz", 1, now=clock.now, idle=2 * HOUR, ttl=HOUR, data={"q1": "red"}),
            record("quiz", 2, now=clock.now, idle=3 * HOUR, ttl=HOUR, state="Quiz:q2"),
            record("quiz", 3, now=clock.now, idle=timedelta(minutes=1), ttl=HOUR),
        ]
    )
    telegram = Bot("42:" + "A" * 35)
    bot = bot_config("quiz", "1h", on_state_expired=f"{module}:on_expired")
    tool = sweeper(database, tmp_path, clock, hook_bots=lambda _: contextlib.nullcontext(telegram))
    sys.path.insert(0, str(tmp_path))
    try:
        hook_module = importlib.import_module(module)
        vars(hook_module)["COLLECTION"] = collection
        with caplog.at_level(logging.ERROR, logger="botyard.cleanup"):
            [result] = await tool.run([bot])
    finally:
        sys.path.remove(str(tmp_path))
        await telegram.session.close()
    assert (result.removed, result.hook_errors, result.error) == (2, 1, None)
    calls = sorted(hook_module.CALLS, key=lambda call: call[1].chat_id)
    assert [(c[0], c[1], c[2], c[3], c[4]) for c in calls] == [
        (telegram, StorageKey(42, 1, 1), "Quiz:q1", {"q1": "red"}, 1),
        (telegram, StorageKey(42, 2, 2), "Quiz:q2", {"answer": 2}, 1),
    ]
    assert await chats(database, "quiz") == [3], "the failing hook's record is removed too"
    [failure] = [r for r in caplog.records if "on_state_expired failed" in r.getMessage()]
    assert "cleanup bot=quiz on_state_expired failed for chat=2 user=2" in failure.getMessage()
    assert "RuntimeError: cannot reach the user" in logging.Formatter().format(failure)


async def test_a_hung_hook_times_out_and_a_broken_one_is_reported(
    database: AsyncDatabase[Document], clock: Clock, tmp_path: Path
) -> None:
    module = write_module(
        tmp_path,
        "slow_hook",
        """
        import asyncio

        async def hangs(bot, key, state, data):
            await asyncio.sleep(3600)

        def not_async(bot, key, state, data):
            pass
        """,
    )
    await database[COLLECTION_NAME].insert_many(
        [record(name, 1, now=clock.now, idle=2 * HOUR, ttl=HOUR) for name in ("hung", "broken")]
    )
    telegram = Bot("42:" + "A" * 35)
    tool = sweeper(
        database,
        tmp_path,
        clock,
        hook_bots=lambda _: contextlib.nullcontext(telegram),
        hook_timeout=0.1,
    )
    hung, broken = await tool.run(
        [
            bot_config("hung", on_state_expired=f"{module}:hangs"),
            bot_config("broken", on_state_expired=f"{module}:not_async"),
        ]
    )
    await telegram.session.close()
    assert (hung.removed, hung.hook_errors) == (1, 1)
    assert broken.error is not None
    assert "expected an async function" in broken.error
    assert await chats(database, "broken") == [1], "nothing removed without its hook"


async def test_a_record_active_again_during_the_sweep_is_kept(
    database: AsyncDatabase[Document], clock: Clock, tmp_path: Path
) -> None:
    module = write_module(
        tmp_path,
        "revive_hook",
        """
        STORAGE = None

        async def on_expired(bot, key, state, data):
            await STORAGE.set_state(key, "Quiz:again")  # the user wrote meanwhile
        """,
    )
    storage = BeanieStorage(database, "quiz", state_ttl=HOUR, clock=clock)
    await storage.set_state(StorageKey(42, 1, 1), "Quiz:q1")
    clock.advance(2 * HOUR)
    sys.path.insert(0, str(tmp_path))
    try:
        vars(importlib.import_module(module))["STORAGE"] = storage
        telegram = Bot("42:" + "A" * 35)
        tool = sweeper(
            database, tmp_path, clock, hook_bots=lambda _: contextlib.nullcontext(telegram)
        )
        [result] = await tool.run([bot_config("quiz", on_state_expired=f"{module}:on_expired")])
        await telegram.session.close()
    finally:
        sys.path.remove(str(tmp_path))
    assert result.removed == 0
    assert await storage.get_state(StorageKey(42, 1, 1)) == "Quiz:again"


async def test_sweep_is_indexed_batched_and_loads_no_record(
    database: AsyncDatabase[Document],
    commands: list[Document],
    clock: Clock,
    tmp_path: Path,
) -> None:
    collection = database[COLLECTION_NAME]
    await collection.insert_many(
        [record("quiz", chat, now=clock.now, idle=2 * HOUR, ttl=7 * DAY) for chat in range(25)]
        + [record("quiz", chat, now=clock.now, idle=HOUR / 2, ttl=HOUR) for chat in range(25, 30)]
    )
    commands.clear()
    [result] = await sweeper(database, tmp_path, clock, batch_size=10).run([bot_config("quiz")])
    sent = list(commands)
    assert result.removed == 25
    assert await chats(database, "quiz") == list(range(25, 30))
    assert [command["name"] for command in sent] == [
        *(["find", "delete"] * 3),  # 10, 10 and 5 stale records
        "find",  # records to realign: none
    ]
    for command in sent:
        if command["name"] == "find":
            assert command["projection"] == {"_id": 1}, "only ids are fetched"
            assert command["limit"] == 10
            assert command["batchSize"] >= 10, "one reply, no getMore"
        else:
            [delete] = command["deletes"]
            assert len(delete["q"]["_id"]["$in"]) <= 10
            assert delete["q"]["updated_at"] == {"$lte": clock.now - HOUR}, "re-checked"
    for query, hint in (
        (stale_filter("quiz", HOUR, clock.now), None),
        (realign_filter("quiz", DAY, clock.now, HOUR), [("namespace", 1), ("purge_at", 1)]),
        (realign_filter("quiz", None, clock.now, HOUR), [("namespace", 1), ("purge_at", 1)]),
    ):
        assert query is not None
        cursor = collection.find(query)
        plan = (await (cursor.hint(hint) if hint else cursor).explain())["queryPlanner"]
        assert "COLLSCAN" not in str(plan["winningPlan"]), query


async def test_purging_one_state_pages_through_the_state_index_by_id(
    database: AsyncDatabase[Document], commands: list[Document], clock: Clock
) -> None:
    """Records of the state that stay (not idle long enough) are read once, not per batch."""
    collection = database[COLLECTION_NAME]
    await collection.insert_many(
        [record("quiz", chat, now=clock.now, idle=HOUR, ttl=None) for chat in range(5)]
        + [record("quiz", chat, now=clock.now, idle=2 * DAY, ttl=None) for chat in range(5, 30)]
        + [record("quiz", 99, now=clock.now, idle=2 * DAY, ttl=None, state="Quiz:done")]
    )
    commands.clear()
    deleted = await FSMRecords(database).delete_selected(
        "quiz", 10, state="Quiz:q1", idle_before=clock.now - DAY
    )
    assert deleted == 25
    finds = [command for command in commands if command["name"] == "find"]
    assert await chats(database, "quiz") == [0, 1, 2, 3, 4, 99]
    assert len(finds) == 3, "10, 10 and 5: each page after the last"
    for find in finds:
        assert dict(find["hint"]) == {"namespace": 1, "state": 1, "_id": 1}
        assert dict(find["sort"]) == {"_id": 1}
    assert "_id" not in finds[0]["filter"]
    assert finds[1]["filter"]["_id"]["$gt"] < finds[2]["filter"]["_id"]["$gt"]


async def test_two_sweeps_at_once_remove_every_record_once(
    database: AsyncDatabase[Document], clock: Clock, tmp_path: Path
) -> None:
    await database[COLLECTION_NAME].insert_many(
        [record("quiz", chat, now=clock.now, idle=2 * HOUR, ttl=HOUR) for chat in range(40)]
    )
    tool = sweeper(database, tmp_path, clock, batch_size=7)
    first, second = await asyncio.gather(
        tool.run([bot_config("quiz")]), tool.run([bot_config("quiz")])
    )
    assert first[0].error is None
    assert second[0].error is None
    assert first[0].removed + second[0].removed == 40
    assert await chats(database, "quiz") == []


@pytest.mark.parametrize(
    ("schedule", "grace"),
    [
        ("1s", 1),
        ("10m", 300),
        ("*/10 * * * *", 300),
        ("0 3 * * 1-5", 3 * 86400 // 2),  # weekdays: the weekend is the longest gap
        ("0 0 31 2 *", 366 * 86400 // 2),  # never fires: counted as yearly
    ],
)
def test_a_run_may_start_half_a_schedule_period_late(schedule: str, grace: int) -> None:
    assert misfire_grace_time(CleanupConfig(schedule=schedule)) == grace


# --- the schedule in a running supervisor --------------------------------------------


ROUTER_SOURCE = """
    from aiogram import Router
    from aiogram.filters import CommandStart
    from aiogram.fsm.context import FSMContext
    from aiogram.types import Message

    def router():
        quiz = Router()

        @quiz.message(CommandStart())
        async def start(message: Message, state: FSMContext) -> None:
            await state.set_state("Quiz:q1")
            await state.update_data(started=True)
            await message.answer("Question 1?")

        return quiz
"""

HOOK_SOURCE = """
    CALLS = []

    async def on_expired(bot, key, state, data):
        CALLS.append(bot)
        await bot.send_message(key.chat_id, f"your quiz expired at {state} with {data}")
"""


def write_registry(path: Path, schedule: str, bots: list[Document], uri: str, db: str) -> None:
    import yaml

    document = {
        "storage": {"uri": uri, "database": db},
        "cleanup": {"schedule": schedule, "batch_size": 100},
        "bots": bots,
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))


async def test_scheduled_cleanup_in_a_running_supervisor(
    bot_api: BotAPIEmulator,
    mongo_uri: str,
    database: AsyncDatabase[Document],
    clock: Clock,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = write_module(tmp_path, "quiz_bot", ROUTER_SOURCE)
    hook = write_module(tmp_path, "quiz_hook", HOOK_SOURCE)
    quiz_token, plain_token = bot_api.add_bot().token, bot_api.add_bot().token
    bots = [
        {
            "name": "quiz",
            "token": quiz_token,
            "routers": [f"{router}:router"],
            "api_server": bot_api.url,
            "state_ttl": "1h",
            "on_state_expired": f"{hook}:on_expired",
        },
        {
            "name": "plain",
            "token": plain_token,
            "routers": [f"{router}:router"],
            "api_server": bot_api.url,
            "state_ttl": "1d",
        },
    ]
    path = tmp_path / "botyard.yaml"
    write_registry(path, "1s", bots, mongo_uri, database.name)
    collection = database[COLLECTION_NAME]
    await collection.insert_many(
        [
            record("plain", 1, now=clock.now, idle=2 * DAY, ttl=DAY),
            record("plain", 2, now=clock.now, idle=2 * HOUR, ttl=DAY),
        ]
    )
    supervisor = Supervisor(load_registry(path), watch=False, clock=clock)
    running = asyncio.create_task(supervisor.run())
    try:
        with caplog.at_level(logging.INFO, logger="botyard"):
            bot_api.send_message(quiz_token, 7, "/start")
            await bot_api.wait_for_reply(quiz_token, 7, text="Question 1?")
            # The reply goes out inside the handler; the state is written when it returns.
            async with asyncio.timeout(10):
                while await chats(database, "quiz") != [7]:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            clock.advance(timedelta(minutes=90))  # the quiz user has been silent for 1.5 h
            expired = await bot_api.wait_for_reply(
                quiz_token,
                7,
                timeout=15,
                text="your quiz expired at Quiz:q1 with {'started': True}",
            )
            assert expired["chat"]["id"] == 7
            wanted = {
                re.compile(r"cleanup bot=quiz removed=1 in \S+s"),
                re.compile(r"cleanup bot=plain removed=1 in \S+s"),
            }
            async with asyncio.timeout(10):  # the sweep logs when the bot's sweep is over
                while wanted:
                    lines = [r.getMessage() for r in caplog.records]
                    wanted = {w for w in wanted if not any(w.fullmatch(line) for line in lines)}
                    await asyncio.sleep(0.05)
        assert await chats(database, "quiz") == []
        assert await chats(database, "plain") == [2], "the 1-day bot keeps its 2-hour-old state"
        calls = importlib.import_module(hook).CALLS
        assert calls
        assert all(bot is supervisor.runners["quiz"].bot for bot in calls)

        write_registry(path, "2h", bots, mongo_uri, database.name)
        assert await supervisor.reload()
        assert supervisor.cleanup is not None
        job = supervisor.cleanup.job
        assert (job.max_instances, job.coalesce, job.misfire_grace_time) == (1, True, 3600)
        until_next = job.next_run_time - datetime.now(UTC)
        assert timedelta(minutes=119) < until_next <= timedelta(hours=2)
    finally:
        supervisor.request_stop()
        assert await asyncio.wait_for(running, 30) == 0


# --- the command line ----------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """The commands configure the root logger; put pytest's handlers back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def sync_db(mongo_uri: str, database_name: str) -> Iterator[Any]:
    client: MongoClient[Document] = MongoClient(mongo_uri, tz_aware=True)
    yield client[database_name]
    client.drop_database(database_name)
    client.close()


def cli_registry(tmp_path: Path, mongo_uri: str, database: str, bots: list[Document]) -> Path:
    path = tmp_path / "botyard.yaml"
    entries = [{"routers": ["x:router"], **bot} for bot in bots]
    write_registry(path, "*/10 * * * *", entries, mongo_uri, database)
    return path


def invoke(*args: str | Path, stdin: str | None = None, clock: Clock | None = None) -> Any:
    environment = None if clock is None else CommandEnvironment(clock=clock)
    return CliRunner().invoke(main, [str(arg) for arg in args], input=stdin, obj=environment)


def table_rows(output: str) -> dict[str, list[str]]:
    """Rows of a rich table, by first cell."""
    rows: dict[str, list[str]] = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("│┃").split("│")]
        if len(cells) > 1 and cells[0]:
            rows[cells[0]] = cells[1:]
    return rows


@pytest.mark.usefixtures("restore_logging")
def test_cleanup_command_dry_run_deletes_nothing_then_the_sweep_removes(
    tmp_path: Path, mongo_uri: str, sync_db: Any, clock: Clock
) -> None:
    path = cli_registry(
        tmp_path,
        mongo_uri,
        sync_db.name,
        [{"name": "quiz", "state_ttl": "1h"}, {"name": "echo", "state_ttl": "never"}],
    )
    sync_db[COLLECTION_NAME].insert_many(
        [
            *(record("quiz", chat, now=clock.now, idle=2 * HOUR, ttl=HOUR) for chat in range(3)),
            record("quiz", 9, now=clock.now, idle=HOUR / 2, ttl=HOUR),
            record("echo", 1, now=clock.now, idle=90 * DAY, ttl=None),
        ]
    )
    dry = invoke("cleanup", path, "--dry-run", clock=clock)
    assert dry.exit_code == 0, dry.output
    assert "cleanup (dry run: nothing deleted)" in dry.output
    assert table_rows(dry.output)["quiz"][:2] == ["1h", "3"]
    assert table_rows(dry.output)["echo"][:2] == ["never", "0"]
    assert "dry run: 3 stale record(s) would be removed; nothing was deleted" in dry.output
    assert sync_db[COLLECTION_NAME].count_documents({}) == 5

    only_echo = invoke("cleanup", path, "--bot", "echo", clock=clock)
    assert only_echo.exit_code == 0, only_echo.output
    assert set(table_rows(only_echo.output)) >= {"echo"}
    assert "quiz" not in only_echo.output

    swept = invoke("cleanup", path, clock=clock)
    assert swept.exit_code == 0, swept.output
    assert table_rows(swept.output)["quiz"][:2] == ["1h", "3"]
    assert "removed 3 stale record(s)" in swept.output
    assert sorted(d["chat_id"] for d in sync_db[COLLECTION_NAME].find({"namespace": "quiz"})) == [9]
    assert sync_db[COLLECTION_NAME].count_documents({"namespace": "echo"}) == 1


@pytest.mark.usefixtures("restore_logging")
def test_cleanup_command_calls_hooks_with_a_bot_made_from_the_registry(
    tmp_path: Path, mongo_uri: str, sync_db: Any, clock: Clock, bot_api_thread: EmulatorThread
) -> None:
    hook = write_module(tmp_path, "cli_hook", HOOK_SOURCE)
    token = bot_api_thread.add_bot().token
    bot_api_thread.send_message(token, 7, "hi")  # the user's chat with the bot exists
    path = cli_registry(
        tmp_path,
        mongo_uri,
        sync_db.name,
        [
            {
                "name": "quiz",
                "state_ttl": "1h",
                "token": token,
                "api_server": bot_api_thread.url,
                "on_state_expired": f"{hook}:on_expired",
            },
            {"name": "tokenless", "state_ttl": "1h", "on_state_expired": f"{hook}:on_expired"},
            {"name": "broken", "state_ttl": "1h", "on_state_expired": "no_such_module:hook"},
        ],
    )
    unknown = invoke("cleanup", path, "--bot", "nope", clock=clock)
    assert unknown.exit_code == 1
    assert "no bot named 'nope' in botyard.yaml (bots: quiz, tokenless, broken)" in unknown.output

    sync_db[COLLECTION_NAME].insert_many(
        [
            record(name, 7, now=clock.now, idle=DAY, ttl=HOUR, data={"q1": "red"})
            for name in ("quiz", "tokenless", "broken")
        ]
    )
    result = invoke("cleanup", path, clock=clock)
    assert result.exit_code == 1
    rows = table_rows(result.output)
    assert rows["quiz"][:4] == ["1h", "1", "0", "0"]
    [notice] = bot_api_thread.sent_messages(token, 7)
    assert notice["text"] == "your quiz expired at Quiz:q1 with {'q1': 'red'}"
    assert "the bot has no token" in rows["tokenless"][-1]
    assert "TOKENLESS_TOKEN" in result.output, "the error says which variable"
    assert "cannot import no_such_module" in rows["broken"][-1]
    assert "the sweep failed for tokenless, broken" in result.output
    assert token not in result.output
    left = sorted(d["namespace"] for d in sync_db[COLLECTION_NAME].find())
    assert left == ["broken", "tokenless"], "nothing is removed without its hook"


@pytest.mark.usefixtures("restore_logging")
def test_an_unreachable_database_is_one_clear_error(tmp_path: Path) -> None:
    # An option in the URI comes before botyard's 5 s: the test waits 0.3 s.
    uri = f"mongodb://127.0.0.1:{free_port()}/?serverSelectionTimeoutMS=300"
    path = cli_registry(tmp_path, uri, "db", [{"name": "quiz"}])
    result = invoke("states", path, "stats")
    assert result.exit_code == 1
    assert f"error: database {uri}: " in result.output
    assert "Traceback" not in result.output


@pytest.mark.usefixtures("restore_logging")
def test_states_stats_counts_per_bot_and_state(
    tmp_path: Path, mongo_uri: str, sync_db: Any, clock: Clock
) -> None:
    path = cli_registry(
        tmp_path,
        mongo_uri,
        sync_db.name,
        [{"name": "quiz", "state_ttl": "1h"}, {"name": "empty", "state_ttl": "1d"}],
    )
    oldest = clock.now - 5 * HOUR
    sync_db[COLLECTION_NAME].insert_many(
        [
            record("quiz", 1, now=clock.now, idle=5 * HOUR, ttl=HOUR, state="Quiz:q1"),
            record("quiz", 2, now=clock.now, idle=2 * HOUR, ttl=HOUR, state="Quiz:q1"),
            record("quiz", 3, now=clock.now, idle=timedelta(minutes=1), ttl=HOUR, state="Quiz:q1"),
            record("quiz", 4, now=clock.now, idle=timedelta(minutes=1), ttl=HOUR, state="Quiz:q2"),
            record("quiz", 5, now=clock.now, idle=timedelta(minutes=1), ttl=HOUR, state=None),
            record("other", 1, now=clock.now, idle=timedelta(minutes=1), ttl=HOUR),
        ]
    )
    result = invoke("states", path, "stats", clock=clock)
    assert result.exit_code == 0, result.output
    rows = table_rows(result.output)
    assert rows["quiz"] == [
        "1h",
        "5",
        "2",
        f"{oldest:%Y-%m-%d %H:%M:%S} UTC",
        "Quiz:q1 3, (no state) 1, Quiz:q2 1",  # most first, then by state
    ]
    assert rows["empty"] == ["1d", "0", "0", "-", "-"]
    assert sync_db[COLLECTION_NAME].count_documents({}) == 6


@pytest.mark.usefixtures("restore_logging")
def test_purge_deletes_only_the_selection(tmp_path: Path, mongo_uri: str, sync_db: Any) -> None:
    path = cli_registry(
        tmp_path,
        mongo_uri,
        sync_db.name,
        [{"name": "questionnaire", "state_ttl": "never"}, {"name": "other", "state_ttl": "never"}],
    )
    now = datetime.now(UTC)
    sync_db[COLLECTION_NAME].insert_many(
        [
            record("questionnaire", 1, now=now, idle=40 * DAY, ttl=None, state="Questionnaire:q1"),
            record("questionnaire", 2, now=now, idle=40 * DAY, ttl=None, state="Questionnaire:q2"),
            record("questionnaire", 3, now=now, idle=10 * DAY, ttl=None, state="Questionnaire:q1"),
            record("other", 1, now=now, idle=40 * DAY, ttl=None, state="Questionnaire:q1"),
        ]
    )
    args = (
        "states",
        path,
        "purge",
        "--bot",
        "questionnaire",
        "--state",
        "Questionnaire:q1",
        "--older-than",
        "30d",
    )
    dry = invoke(*args, "--dry-run")
    assert dry.exit_code == 0, dry.output
    selection = "bot questionnaire, state Questionnaire:q1, idle for more than 30d"
    assert f"dry run: would delete 1 record(s): {selection}" in dry.output
    assert sync_db[COLLECTION_NAME].count_documents({}) == 4

    done = invoke(*args, "--yes")
    assert done.exit_code == 0, done.output
    assert f"deleted 1 record(s): {selection}" in done.output
    left = sorted((d["namespace"], d["chat_id"]) for d in sync_db[COLLECTION_NAME].find())
    assert left == [("other", 1), ("questionnaire", 2), ("questionnaire", 3)]

    nothing = invoke(*args, "--yes")
    assert nothing.exit_code == 0
    assert "no records match" in nothing.output


@pytest.mark.usefixtures("restore_logging")
def test_purge_refuses_without_confirmation_and_for_unknown_bots_or_bad_durations(
    tmp_path: Path, mongo_uri: str, sync_db: Any
) -> None:
    path = cli_registry(tmp_path, mongo_uri, sync_db.name, [{"name": "quiz", "state_ttl": "never"}])
    sync_db[COLLECTION_NAME].insert_one(
        record("quiz", 1, now=datetime.now(UTC), idle=DAY, ttl=None)
    )
    no_tty = invoke("states", path, "purge", "--bot", "quiz", stdin="y\n")
    assert no_tty.exit_code == 1
    assert "stdin is not a terminal; pass --yes" in no_tty.output
    unknown = invoke("states", path, "purge", "--bot", "quizz", "--yes")
    assert unknown.exit_code == 1
    assert "no bot named 'quizz' in botyard.yaml (bots: quiz)" in unknown.output
    bad = invoke("states", path, "purge", "--bot", "quiz", "--older-than", "30", "--yes")
    assert bad.exit_code == 2
    assert "--older-than" in bad.output
    assert "bare number 30 has no unit" in bad.output
    assert sync_db[COLLECTION_NAME].count_documents({}) == 1


def on_a_terminal(args: list[str], answer: str, cwd: Path) -> tuple[int, str]:
    """Run botyard with its stdin and stdout on a pseudo-terminal; answer its question."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "botyard", *args],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200"},
    )
    os.close(follower)
    output, answered, deadline = b"", False, time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(leader, 4096)
                except OSError:  # the terminal closed: the process exited
                    break
                if not chunk:
                    break
                output += chunk
            if not answered and b"[y/N]" in output:
                os.write(leader, answer.encode() + b"\r")
                answered = True
            if process.poll() is not None and not ready:
                break
        return process.wait(10), output.decode(errors="replace")
    finally:
        os.close(leader)
        if process.poll() is None:
            process.kill()


@pytest.mark.usefixtures("restore_logging")
def test_purge_asks_on_a_terminal_and_deletes_in_batches_when_confirmed(
    tmp_path: Path, mongo_uri: str, sync_db: Any
) -> None:
    path = cli_registry(tmp_path, mongo_uri, sync_db.name, [{"name": "quiz", "state_ttl": "never"}])
    text = path.read_text().replace("batch_size: 100", "batch_size: 10")
    path.write_text(text)
    now = datetime.now(UTC)
    sync_db[COLLECTION_NAME].insert_many(
        [record("quiz", chat, now=now, idle=DAY, ttl=None, state="Quiz:q1") for chat in range(35)]
        + [record("quiz", 99, now=now, idle=DAY, ttl=None, state="Quiz:done")]
    )
    args = ["states", str(path), "purge", "--bot", "quiz", "--state", "Quiz:q1"]
    declined, output = on_a_terminal(args, "n", tmp_path)
    assert declined == 1, output
    assert "Delete 35 record(s): bot quiz, state Quiz:q1? [y/N]" in output
    assert "Aborted" in output
    assert sync_db[COLLECTION_NAME].count_documents({}) == 36

    confirmed, output = on_a_terminal(args, "y", tmp_path)
    assert confirmed == 0, output
    assert "deleted 35 record(s): bot quiz, state Quiz:q1" in output
    assert re.search(r"deleting .*\d+/35", output), "a progress bar over the 4 batches"
    assert [d["chat_id"] for d in sync_db[COLLECTION_NAME].find()] == [99]


@pytest.mark.usefixtures("restore_logging")
def test_commands_use_the_embedded_store_without_a_storage_uri(tmp_path: Path) -> None:
    path = tmp_path / "botyard.yaml"
    path.write_text("bots:\n  - name: quiz\n    routers: [x:router]\n")
    result = invoke("states", path, "stats")
    assert result.exit_code == 0, result.output
    assert table_rows(result.output)["quiz"][:3] == ["7d", "0", "0"]
    assert (tmp_path / ".botyard" / "data").is_dir()
    swept = invoke("cleanup", path)
    assert swept.exit_code == 0, swept.output
    assert "removed 0 stale record(s)" in swept.output


# --- bad input in the registry --------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ('"*/61 * * * *"', "invalid cron expression '*/61 * * * *'"),
        ('"0 0 * *"', "invalid cron expression '0 0 * *'"),
        ("10x", "invalid schedule '10x'"),
    ],
)
@pytest.mark.usefixtures("restore_logging")
def test_a_bad_schedule_is_a_config_error_naming_the_field(
    tmp_path: Path, schedule: str, message: str
) -> None:
    path = tmp_path / "botyard.yaml"
    path.write_text(
        f"cleanup:\n  schedule: {schedule}\nbots:\n  - name: quiz\n    routers: [x:router]\n"
    )
    with pytest.raises(RegistryError) as raised:
        load_registry(path, require_tokens=False)
    [problem] = raised.value.problems
    assert problem.startswith(f"{path}:2: cleanup.schedule: ")
    assert message in problem
    result = invoke("cleanup", path, "--dry-run")
    assert result.exit_code == 1
    assert "cleanup.schedule" in result.output
    assert message in result.output


# --- the benchmark ---------------------------------------------------------------------


def test_the_benchmark_runs(mongo_uri: str) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "cleanup.py"),
            "--uri",
            mongo_uri,
            "--records",
            "40",
            "--runs",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "10 bots, 40 stale + 40 live records" in result.stdout
    assert re.search(r"round trips per 1,000 removed: \d+\.\d", result.stdout)
