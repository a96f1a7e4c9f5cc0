"""Delivery under failure, in-process: re-runs, flush retries, bounds, stuck chats, bad updates.

Each test runs a real :class:`BotRunner` polling the emulator over HTTP through
the platform's session, with its FSM state in the test database and, where a
test needs it, the journal. Errors the test server cannot produce (a write
refused in an election) are injected as PyMongo raises them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from aiogram import Bot, F, Router
from aiogram.client.telegram import TelegramAPIServer
from aiogram.fsm.context import FSMContext
from aiogram.fsm.storage.base import StorageKey
from aiogram.types import Message, Update
from aiogram.utils.backoff import BackoffConfig
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import AutoReconnect, BulkWriteError, OperationFailure, WriteConcernError

from botyard.database.roundtrips import RoundTripCounter
from botyard.emulator import BotAPIEmulator
from botyard.runtime.http_sessions import PlatformSession
from botyard.runtime.routers import BotRouters
from botyard.runtime.runner import REPOLL_WHILE_BUSY, BotRunner, BotSpec
from botyard.storage import BeanieStorage, prepare_database
from botyard.webhook.journal import JOURNAL_COLLECTION, UpdateJournal

FAST = BackoffConfig(min_delay=0.05, max_delay=0.2, factor=2.0, jitter=0.0)


@dataclass
class Rig:
    """The emulator, the database, and a journal; makes runners of one bot."""

    emulator: BotAPIEmulator
    database: AsyncDatabase[dict[str, Any]]
    journal: UpdateJournal
    token: str
    counter: RoundTripCounter

    def storage(self) -> BeanieStorage:
        return BeanieStorage(self.database, "bot", state_ttl=timedelta(hours=1))

    def runner(self, router: Router, *, journal: bool = True, **spec: Any) -> BotRunner:
        session = PlatformSession(api=TelegramAPIServer.from_base(self.emulator.url))
        return BotRunner(
            BotSpec(
                name="bot",
                token=self.token,
                routers=BotRouters.of(router),
                storage=self.storage(),
                journal=self.journal if journal else None,
                retry_backoff=FAST,
                **spec,
            ),
            Bot(self.token, session=session),
        )

    async def state_of(self, user: int) -> tuple[str | None, dict[str, Any]]:
        storage = self.storage()
        bot_id = int(self.token.split(":")[0])
        key = StorageKey(bot_id=bot_id, chat_id=user, user_id=user)
        return await storage.get_state(key), await storage.get_data(key)

    async def journaled(self) -> list[int]:
        entries = self.database[JOURNAL_COLLECTION].find({"bot": "bot"})
        return sorted([entry["update_id"] async for entry in entries])

    def texts(self, user: int) -> list[str]:
        return [message["text"] for message in self.emulator.sent_messages(self.token, user)]


@pytest.fixture
async def rig(bot_api: BotAPIEmulator, mongo_uri: str, database_name: str) -> AsyncIterator[Rig]:
    counter = RoundTripCounter()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        mongo_uri, tz_aware=True, event_listeners=[counter]
    )
    database = client[database_name]
    await prepare_database(database)
    journal = UpdateJournal(database)
    await journal.prepare()
    yield Rig(bot_api, database, journal, bot_api.add_bot().token, counter)
    await journal.close()
    await client.drop_database(database_name)
    await client.close()


async def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - polling plain attributes
            await asyncio.sleep(0.02)


async def stop(runner: BotRunner, timeout: float = 5.0) -> bool:
    drained = await runner.stop(timeout)
    await runner.bot.session.close()
    return drained


def counting_router(fail_first: Callable[[], BaseException] | None = None) -> Router:
    """``count`` adds one to the user's counter and says so; the first attempt may fail."""
    router = Router()
    attempts = 0

    @router.message(F.text == "count")
    async def count(message: Message, state: FSMContext) -> None:
        nonlocal attempts
        attempts += 1
        counted = (await state.get_data()).get("n", 0) + 1
        await state.update_data(n=counted)
        await state.set_state("counted")
        if attempts == 1 and fail_first is not None:
            raise fail_first()
        await message.answer(f"n={counted}")

    @router.message(F.text)
    async def echo(message: Message) -> None:
        await message.answer(message.text or "")

    return router


async def test_an_update_handled_again_starts_from_the_state_before_it(rig: Rig) -> None:
    """The first attempt wrote n=1 and failed transiently: the re-run must not see n=1."""
    runner = rig.runner(counting_router(lambda: AutoReconnect("primary stepped down")))
    runner.start()
    rig.emulator.send_message(rig.token, 1, "count")
    assert (await rig.emulator.wait_for_reply(rig.token, 1))["text"] == "n=1"
    await wait_for(lambda: runner.counters.handled == 1)
    assert runner.counters.retries == 1
    assert await rig.state_of(1) == ("counted", {"n": 1})
    await stop(runner)
    assert rig.texts(1) == ["n=1"]


async def test_a_failed_flush_is_retried_as_a_flush_and_the_reply_goes_once(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """MongoDB refuses the write three ways it does in a failover, then takes it."""
    real_write = BeanieStorage.write_records
    failures: list[BaseException] = [
        AutoReconnect("connection reset"),
        BulkWriteError(
            {
                "writeErrors": [],
                "writeConcernErrors": [
                    {"code": 91, "errmsg": "shutting down", "errorLabels": ["RetryableWriteError"]}
                ],
                "nInserted": 0,
            }
        ),
        WriteConcernError("not primary", 10107, {"errorLabels": ["RetryableWriteError"]}),
    ]
    writes = 0

    async def flaky_write(self: BeanieStorage, records: Any) -> None:
        nonlocal writes
        writes += 1
        if failures:
            raise failures.pop(0)
        await real_write(self, records)

    monkeypatch.setattr(BeanieStorage, "write_records", flaky_write)
    runner = rig.runner(counting_router())
    runner.start()
    with caplog.at_level(logging.WARNING, logger="botyard.bot"):
        rig.emulator.send_message(rig.token, 2, "count")
        await wait_for(lambda: runner.counters.handled == 1)
    assert writes == 4
    assert runner.counters.retries == 3
    assert rig.texts(2) == ["n=1"], "the handler ran once: one reply"
    assert await rig.state_of(2) == ("counted", {"n": 1})
    stored_again = [m for m in caplog.messages if "storing them again" in m]
    assert len(stored_again) == 3
    assert "(the handler is not run again)" in stored_again[0]
    await stop(runner)


async def test_an_ordinary_handler_error_keeps_its_writes_and_confirms(rig: Rig) -> None:
    runner = rig.runner(counting_router(lambda: ValueError("a bug")))
    runner.start()
    first = rig.emulator.send_message(rig.token, 3, "count")
    rig.emulator.send_message(rig.token, 3, "count")
    assert (await rig.emulator.wait_for_reply(rig.token, 3))["text"] == "n=2"
    await wait_for(lambda: runner.counters.handled == 1)  # its writes land after the reply
    assert runner.counters.errors == 1
    assert runner.counters.retries == 0
    assert await rig.state_of(3) == ("counted", {"n": 2})
    await stop(runner)
    assert rig.emulator.confirmed_offset(rig.token) > first["update_id"]


async def test_a_failed_update_leaves_no_users_words_on_the_log_record(
    rig: Rig,
) -> None:
    """Handlers besides botyard's (an error tracker's) read every field of a record: the
    update's text must not be among them, only which chat it was."""
    records: list[logging.LogRecord] = []

    class Tracker(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    tracker = Tracker(logging.ERROR)
    logging.getLogger("botyard.bot").addHandler(tracker)
    runner = rig.runner(counting_router(lambda: ValueError("a bug")))
    try:
        runner.start()
        rig.emulator.send_message(rig.token, 12, "count")
        await wait_for(lambda: runner.counters.errors == 1)
        rig.emulator.send_message(rig.token, 12, "my private words")
        assert (await rig.emulator.wait_for_reply(rig.token, 12))["text"] == "my private words"
    finally:
        logging.getLogger("botyard.bot").removeHandler(tracker)
        await stop(runner)
    [failed] = [record for record in records if getattr(record, "event", None)]
    assert failed.event == "handler_failed"  # type: ignore[attr-defined]
    fields = " ".join(repr(value) for value in vars(failed).values())
    assert "'count'" not in fields, fields
    assert "text=" not in fields, fields
    assert failed.user_id == 12  # type: ignore[attr-defined]  # the sandbox's chat


async def test_a_failed_handler_whose_writes_are_refused_counts_one_error(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``botyard_handler_errors`` counts updates: one update, one error, however it failed."""

    real_write = BeanieStorage.write_records

    async def refuse(self: BeanieStorage, records: Any) -> None:
        if any(record.dirty for record in records.values()):
            raise OperationFailure("Document failed validation", 121)
        await real_write(self, records)

    monkeypatch.setattr(BeanieStorage, "write_records", refuse)
    runner = rig.runner(counting_router(lambda: ValueError("a bug")))
    runner.start()
    rig.emulator.send_message(rig.token, 16, "count")
    rig.emulator.send_message(rig.token, 16, "after it")
    assert (await rig.emulator.wait_for_reply(rig.token, 16))["text"] == "after it"
    await stop(runner)
    assert runner.counters.errors == 1
    assert runner.counters.handled == 1, "the echo: nothing to write"


def doomed_router(fail: Callable[[], Awaitable[None]]) -> Router:
    """``doomed`` writes a state, then ``fail()``s; anything else is answered "fine"."""
    router = Router()

    @router.message(F.text == "doomed")
    async def doomed(message: Message, state: FSMContext) -> None:
        await state.set_state("half-way")
        await fail()

    @router.message(F.text)
    async def fine(message: Message) -> None:
        await message.answer("fine")

    return router


async def doom_then_go_on(rig: Rig, runner: BotRunner, user: int) -> int:
    """The doomed update's id, once the next one of the same chat was answered."""
    runner.start()
    doomed = rig.emulator.send_message(rig.token, user, "doomed")
    rig.emulator.send_message(rig.token, user, "next")
    assert (await rig.emulator.wait_for_reply(rig.token, user, timeout=30))["text"] == "fine"
    assert runner.counters.given_up == 1
    assert await rig.state_of(user) == (None, {}), "the doomed attempts' writes were discarded"
    await stop(runner)
    assert rig.emulator.pending_updates(rig.token) == []
    return int(doomed["update_id"])


async def test_retries_are_bounded_then_the_update_is_given_up_logged_and_counted(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    async def unreachable() -> None:
        raise AutoReconnect("unreachable")

    runner = rig.runner(doomed_router(unreachable), update_retries=2)
    with caplog.at_level(logging.WARNING, logger="botyard.bot"):
        doomed = await doom_then_go_on(rig, runner, 4)
    assert runner.counters.retries == 2
    [line] = [m for m in caplog.messages if "given up" in m]
    assert f"bot=bot update={doomed} given up: failed 3 times" in line


async def test_a_handler_over_its_timeout_is_cancelled_and_given_up(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    runner = rig.runner(doomed_router(lambda: asyncio.sleep(60)), handling_timeout=0.3)
    with caplog.at_level(logging.ERROR, logger="botyard.bot"):
        doomed = await doom_then_go_on(rig, runner, 5)
    assert (
        f"bot=bot update={doomed} given up: still running after handling_timeout "
        "(0.3s); update confirmed" in caplog.messages
    )


async def test_a_malformed_update_is_skipped_logged_by_id_and_counted(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    runner = rig.runner(counting_router())
    runner.start()
    bad = rig.emulator.queue_raw_update(
        rig.token,
        "message",
        {"message_id": "x", "date": 0, "chat": {"id": 6}, "text": "my secret words"},
    )
    with caplog.at_level(logging.INFO):
        rig.emulator.send_message(rig.token, 6, "after it")
        assert (await rig.emulator.wait_for_reply(rig.token, 6))["text"] == "after it"
    assert runner.counters.malformed == 1
    assert runner.status.value == "running"
    [line] = [m for m in caplog.messages if "does not parse" in m]
    assert line == (
        f"bot=bot update={bad['update_id']} skipped and confirmed: it does not parse as an "
        "aiogram Update (message.message_id: int_parsing; message.chat.type: missing)"
    )
    assert "my secret words" not in caplog.text
    await stop(runner)
    assert rig.emulator.pending_updates(rig.token) == []


def hanging_router(release: asyncio.Event) -> Router:
    """``hang`` waits for ``release``; everything else is answered at once."""
    router = Router()

    @router.message(F.text == "hang")
    async def hang(message: Message, state: FSMContext) -> None:
        await state.update_data(hung=True)
        await release.wait()
        await message.answer("released")

    @router.message(F.text)
    async def echo(message: Message) -> None:
        await message.answer(message.text or "")

    return router


async def test_a_stuck_chat_never_holds_back_the_others_and_survives_a_restart(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    dumped: list[int] = []
    dump = Update.model_dump

    def counted_dump(update: Update, **options: Any) -> dict[str, Any]:
        dumped.append(update.update_id)
        return dump(update, **options)

    monkeypatch.setattr(Update, "model_dump", counted_dump)
    release = asyncio.Event()
    runner = rig.runner(hanging_router(release))
    runner.start()
    stuck = rig.emulator.send_message(rig.token, 7, "hang")
    queued = rig.emulator.send_message(rig.token, 7, "queued behind")
    others = range(1000, 1150)
    for user in others:
        rig.emulator.send_message(rig.token, user, f"hi {user}")
    for user in others:  # 150 chats: more than one getUpdates answer holds
        assert (await rig.emulator.wait_for_reply(rig.token, user, timeout=60))["text"] == (
            f"hi {user}"
        )
    assert rig.texts(7) == [], "the stuck chat is still stuck"
    await wait_for(lambda: runner.counters.handled == len(others))  # replied, then finished
    await rig.journal.flush()  # what finished leaves the journal (batched)
    assert await rig.journaled() == [stuck["update_id"], queued["update_id"]]
    stored = rig.database[JOURNAL_COLLECTION].find({"bot": "bot"}, sort=[("update_id", 1)])
    assert [entry["update"] async for entry in stored] == [stuck, queued], "not as sent"
    assert dumped == [], "journaled from the parsed update, not from the JSON it came in"
    # Confirmed with the next poll: everything but the two stuck ones.
    everything = queued["update_id"] + len(others) + 1
    await wait_for(lambda: rig.emulator.confirmed_offset(rig.token) == everything)
    assert runner.counters.journaled >= 2  # more when handling others took seconds

    # Stopped while stuck (a crash would leave the same): the journal still has both.
    assert not await stop(runner, timeout=0.2)
    assert await rig.journaled() == [stuck["update_id"], queued["update_id"]]
    assert rig.emulator.pending_updates(rig.token) == []

    release.set()
    again = rig.runner(hanging_router(release))
    again.start()
    replies = await rig.emulator.wait_for_reply(rig.token, 7, count=2, timeout=30)
    assert isinstance(replies, list)
    assert [reply["text"] for reply in replies] == ["released", "queued behind"]
    await wait_for(lambda: again.counters.handled == 2)
    await rig.journal.flush()
    assert await rig.journaled() == []
    await stop(again)
    assert rig.texts(7) == ["released", "queued behind"]


async def test_an_update_journaled_though_the_journal_said_no_is_not_handled_twice(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Journaling a waiting update committed, but its answer was lost: the update stays
    unconfirmed and is handled from memory; once done, its entry must go, not be handed
    out again by the next claim (the supervisor claims at every heartbeat)."""
    release = asyncio.Event()
    real_insert = AsyncCollection.insert_many
    answers_lost = 0

    async def insert_losing_the_answer(
        self: AsyncCollection[Any], documents: Any, *args: Any, **kwargs: Any
    ) -> Any:
        nonlocal answers_lost
        if self.name != JOURNAL_COLLECTION:
            return await real_insert(self, documents, *args, **kwargs)
        with contextlib.suppress(BulkWriteError):  # journaled by an earlier try
            await real_insert(self, documents, *args, **kwargs)
        answers_lost += 1
        release.set()
        raise AutoReconnect("connection closed before the answer")

    monkeypatch.setattr(AsyncCollection, "insert_many", insert_losing_the_answer)
    runner = rig.runner(hanging_router(release))
    runner.start()
    rig.emulator.send_message(rig.token, 13, "hang")
    assert (await rig.emulator.wait_for_reply(rig.token, 13, timeout=30))["text"] == "released"
    await wait_for(lambda: runner.counters.handled == 1)
    assert answers_lost >= 1
    assert runner.counters.journaled == 0
    await rig.journal.flush()
    assert await rig.journal.claim(["bot"]) == [], "it would be handled a second time"
    assert await rig.journaled() == []
    await stop(runner)
    assert rig.texts(13) == ["released"]
    assert rig.emulator.pending_updates(rig.token) == []


async def test_a_journal_refusing_writes_does_not_spin_the_polling_loop(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal refuses at once (the application's user may not insert): the waiting
    updates stay unconfirmed, and polling goes on at its busy pace, not in a tight loop of
    getUpdates and refused inserts."""
    refused = 0

    async def refuse(self: AsyncCollection[Any], *args: Any, **kwargs: Any) -> Any:
        nonlocal refused
        refused += 1
        raise OperationFailure("not authorized on botyard to execute command", 13)

    monkeypatch.setattr(AsyncCollection, "insert_many", refuse)
    release = asyncio.Event()
    runner = rig.runner(hanging_router(release))
    runner.start()
    stuck = rig.emulator.send_message(rig.token, 14, "hang")
    for user in range(3000, 3100):  # a full getUpdates answer behind the stuck one
        rig.emulator.send_message(rig.token, user, "quick")
    await wait_for(lambda: refused >= 2)
    polls, started = rig.emulator.calls(rig.token, "getUpdates"), time.monotonic()
    await asyncio.sleep(3)
    elapsed = time.monotonic() - started
    assert rig.emulator.calls(rig.token, "getUpdates") - polls <= 2 + elapsed / REPOLL_WHILE_BUSY
    assert refused <= 3 + elapsed / REPOLL_WHILE_BUSY
    assert rig.emulator.confirmed_offset(rig.token) <= stuck["update_id"]
    release.set()
    await wait_for(lambda: runner.counters.handled == 101)
    await stop(runner)
    assert rig.emulator.pending_updates(rig.token) == []


async def test_a_journaled_update_handed_to_a_stopped_runner_goes_to_the_next_claim(
    rig: Rig,
) -> None:
    """A heartbeat's claim may end after a reload stopped the runner it was for: the stopped
    runner must not handle the update (its routers are the new runner's now), but let it go."""
    runner = rig.runner(counting_router())
    runner.start()
    rig.emulator.send_message(rig.token, 15, "before")
    assert (await rig.emulator.wait_for_reply(rig.token, 15))["text"] == "before"
    await stop(runner)
    update = rig.emulator.send_message(rig.token, 15, "late")
    await rig.journal.park("bot", [(update["update_id"], update)])
    rig.journal.release("bot")  # as a dead process's entry would be
    [entry] = await rig.journal.claim(["bot"])
    runner.accept_journaled(entry)
    assert runner.counters.received == 1, "the stopped runner took nothing"
    assert await rig.journal.claim(["bot"]) == [entry], "the next claim hands it out"


@pytest.mark.parametrize("left", ["still running", "failing while stopping"])
async def test_journaled_updates_a_stopped_runner_left_unfinished_go_to_any_process(
    rig: Rig, left: str
) -> None:
    """A bot stopped here while still running (moved to another replica, or changed by a
    reload) must not leave its journaled updates to this process alone: the process lives
    on, so no other would ever claim them."""
    rig.journal.instance = "replica-a:1:a"  # not this host's: judged by its heartbeat only
    await rig.journal.heartbeat()
    release = asyncio.Event()

    async def fail_once_released() -> None:
        await release.wait()
        raise AutoReconnect("unreachable")

    failing = left == "failing while stopping"
    runner = rig.runner(doomed_router(fail_once_released) if failing else hanging_router(release))
    runner.start()
    stuck = rig.emulator.send_message(rig.token, 17, "doomed" if failing else "hang")
    await wait_for(lambda: runner.counters.journaled == 1)
    if failing:  # left for redelivery: the stop drains
        stopping = asyncio.create_task(stop(runner, timeout=30))
        await asyncio.sleep(0.2)  # the stop began: what fails now is left for redelivery
        release.set()
        assert await stopping
    else:
        assert not await stop(runner, timeout=0.2)
    replica = UpdateJournal(rig.database)
    replica.instance = "replica-b:2:b"
    await replica.heartbeat()
    [entry] = await replica.claim(["bot"])
    assert entry.update_id == stuck["update_id"]
    assert await rig.journal.claim(["bot"]) == [], "the other replica has it now"


async def test_an_update_both_journaled_and_still_at_telegram_is_handled_once(rig: Rig) -> None:
    """A crash between journaling an update and confirming past it leaves it in both places."""
    update = rig.emulator.send_message(rig.token, 8, "twice?")
    await rig.journal.park("bot", [(update["update_id"], update)])
    runner = rig.runner(counting_router())
    runner.start()
    assert (await rig.emulator.wait_for_reply(rig.token, 8))["text"] == "twice?"
    rig.emulator.send_message(rig.token, 8, "later")
    assert (await rig.emulator.wait_for_reply(rig.token, 8))["text"] == "later"
    await stop(runner)
    assert rig.texts(8) == ["twice?", "later"]
    assert rig.emulator.pending_updates(rig.token) == []
    await rig.journal.flush()
    assert await rig.journaled() == []


async def test_polling_again_waits_for_the_offset_to_move(rig: Rig) -> None:
    """Updates finishing behind a slow one do not each trigger a poll returning them all again."""
    release = asyncio.Event()
    runner = rig.runner(hanging_router(release))
    runner.start()
    rig.emulator.send_message(rig.token, 9, "hang")
    await wait_for(lambda: runner.counters.received == 1)
    polls = rig.emulator.calls(rig.token, "getUpdates")
    started = time.monotonic()
    for user in range(2000, 2020):
        rig.emulator.send_message(rig.token, user, "quick")
    for user in range(2000, 2020):
        await rig.emulator.wait_for_reply(rig.token, user, timeout=30)
    elapsed = time.monotonic() - started
    # One poll brings the 20, then one per REPOLL_WHILE_BUSY (the offset never moved).
    assert rig.emulator.calls(rig.token, "getUpdates") - polls <= 2 + elapsed / REPOLL_WHILE_BUSY
    release.set()
    await rig.emulator.wait_for_reply(rig.token, 9)
    await stop(runner)


async def test_round_trips_per_update_stay_one_read_and_one_write(rig: Rig) -> None:
    runner = rig.runner(counting_router())
    runner.start()

    async def one(user: int, text: str) -> dict[str, int]:
        handled = runner.counters.handled
        rig.counter.reset()
        rig.emulator.send_message(rig.token, user, text)
        await wait_for(lambda: runner.counters.handled == handled + 1)
        return dict(rig.counter.commands)

    await one(10, "warm up")  # the first poll resumed from the journal: 2 round trips at start
    assert await one(10, "echo") == {"find": 1}
    assert await one(11, "count") == {"find": 1, "update": 1}
    assert await one(11, "count") == {"find": 1, "update": 1}
    await stop(runner)
