"""One bot's runner in-process: crash restarts, poison messages, conflicts, ordering."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
from aiogram import Bot, F, Router
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.fsm.context import FSMContext
from aiogram.fsm.storage.base import StorageKey
from aiogram.methods import GetUpdates, TelegramMethod
from aiogram.types import CallbackQuery, Message
from aiogram.utils.backoff import Backoff, BackoffConfig
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from botyard.emulator import BotAPIEmulator
from botyard.registry.diff import diff_registries
from botyard.registry.loader import load_registry
from botyard.runtime import gc_pause
from botyard.runtime import supervisor as supervisor_module
from botyard.runtime.routers import BotRouters
from botyard.runtime.runner import BotRunner, BotSpec, BotStatus, StatusListener
from botyard.runtime.supervisor import Supervisor
from botyard.storage import BeanieStorage, prepare_database

from mongo_faults import RETRYABLE, Faulty, bulk_write_error, write_concern_error

FAST = BackoffConfig(min_delay=0.05, max_delay=0.2, factor=2.0, jitter=0.0)
T = TypeVar("T")


@pytest.fixture
async def storage(mongo_uri: str, database_name: str) -> AsyncIterator[BeanieStorage]:
    client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_uri, tz_aware=True)
    await prepare_database(client[database_name])
    yield BeanieStorage(client[database_name], "bot", state_ttl=timedelta(hours=1))
    await client.drop_database(database_name)
    await client.close()


def make_runner(
    emulator: BotAPIEmulator,
    token: str,
    storage: BeanieStorage,
    router: Router,
    *,
    session: AiohttpSession | None = None,
    on_status: StatusListener | None = None,
    **spec: Any,
) -> BotRunner:
    session = session or AiohttpSession(api=TelegramAPIServer.from_base(emulator.url))
    spec = {"restart_backoff": FAST, "retry_backoff": FAST, **spec}
    return BotRunner(
        BotSpec(name="bot", token=token, routers=BotRouters.of(router), storage=storage, **spec),
        Bot(token, session=session),
        on_status=on_status,
    )


class CrashingSession(AiohttpSession):
    """Crashes the polling loop once per entry of ``healthy_for`` (a bug-like error, not a
    Telegram one): at once for 0, else after answering one poll (the bot runs) and
    holding the next that many seconds. Then it polls the emulator."""

    def __init__(self, emulator: BotAPIEmulator, healthy_for: list[float]) -> None:
        super().__init__(api=TelegramAPIServer.from_base(emulator.url))
        self.healthy_for = healthy_for
        self._answered = False

    async def make_request(
        self, bot: Bot, method: TelegramMethod[T], timeout: int | None = None
    ) -> T:
        if not isinstance(method, GetUpdates) or not self.healthy_for:
            return await super().make_request(bot, method, timeout)
        if self.healthy_for[0] and not self._answered:
            self._answered = True
            return cast(T, [])
        await asyncio.sleep(self.healthy_for.pop(0))
        self._answered = False
        raise RuntimeError("polling bug")


def echo_router() -> Router:
    router = Router()

    @router.message(F.text)
    async def echo(message: Message) -> None:
        await message.answer(message.text or "")

    return router


async def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - polling a plain attribute
            await asyncio.sleep(0.02)


async def test_a_crashed_polling_loop_restarts_with_backoff(
    bot_api: BotAPIEmulator, storage: BeanieStorage
) -> None:
    token = bot_api.add_bot().token
    router = echo_router()

    session = CrashingSession(bot_api, healthy_for=[0.0, 0.0])
    seen: list[tuple[BotStatus, str]] = []
    runner = make_runner(
        bot_api,
        token,
        storage,
        router,
        session=session,
        on_status=lambda _runner, status, detail: seen.append((status, detail)),
    )
    runner.start()
    bot_api.send_message(token, 1, "hi")
    reply = await bot_api.wait_for_reply(token, 1)
    assert reply["text"] == "hi"
    assert session.healthy_for == []
    assert [status for status, _ in seen] == [
        BotStatus.STARTING,
        BotStatus.BACKING_OFF,
        BotStatus.RUNNING,
    ]
    assert seen[1][1].startswith("RuntimeError: polling bug; restarting in ")
    await runner.stop(5)
    await runner.bot.session.close()


async def test_a_failing_handler_is_logged_counted_and_confirmed(
    bot_api: BotAPIEmulator, storage: BeanieStorage, caplog: pytest.LogCaptureFixture
) -> None:
    token = bot_api.add_bot().token
    router = Router()

    @router.message(F.text == "poison")
    async def poison(message: Message) -> None:
        raise ValueError("cannot digest")

    @router.message(F.text)
    async def fine(message: Message) -> None:
        await message.answer("fine")

    runner = make_runner(bot_api, token, storage, router)
    runner.start()
    with caplog.at_level(logging.ERROR, logger="botyard.bot"):
        poisoned = bot_api.send_message(token, 1, "poison")
        bot_api.send_message(token, 1, "next")
        assert (await bot_api.wait_for_reply(token, 1))["text"] == "fine"
        # The reply goes out inside the handler; the update counts once the handler returned.
        await wait_for(lambda: runner.counters.handled == 1)
    assert runner.counters.errors == 1
    [line] = [r.getMessage() for r in caplog.records if "handler failed" in r.getMessage()]
    assert f"bot=bot update={poisoned['update_id']} handler failed" in line
    await runner.stop(5)
    assert bot_api.pending_updates(token) == []
    await runner.bot.session.close()


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (bulk_write_error(labels=RETRYABLE), True),
        (write_concern_error(RETRYABLE), True),
        (bulk_write_error(write_errors=[{"index": 0, "code": 2, "errmsg": "bad"}]), False),
    ],
    ids=["bulk-write-error-retryable", "write-concern-error-retryable", "not-retryable"],
)
async def test_a_write_mongodb_labels_retryable_is_handled_again_not_lost(
    bot_api: BotAPIEmulator, storage: BeanieStorage, error: PyMongoError, retried: bool
) -> None:
    """A failover's RetryableWriteError: the update is retried, not confirmed without its write."""
    token = bot_api.add_bot().token
    router = Router()

    @router.message(F.text)
    async def remember(message: Message, state: FSMContext) -> None:
        await state.set_state("Quiz:q1")
        await message.answer("noted")

    faulty = Faulty(storage.collection, "bulk_write", error)
    storage.collection = faulty  # type: ignore[assignment]
    runner = make_runner(bot_api, token, storage, router)
    runner.start()
    bot_api.send_message(token, 9, "hello")
    await wait_for(lambda: runner.counters.handled + runner.counters.errors == 1)
    assert faulty.failures_left == 0, "the injected error was raised"
    stored = await storage.get_state(StorageKey(bot_id=runner.bot.id, chat_id=9, user_id=9))
    if retried:
        assert (runner.counters.retries, runner.counters.errors) == (1, 0)
        assert stored == "Quiz:q1", "the FSM write was made by the retry"
    else:
        assert (runner.counters.retries, runner.counters.errors) == (0, 1)
        assert stored is None
    await runner.stop(5)
    await runner.bot.session.close()


async def test_two_pollers_on_one_token_report_a_conflict(
    bot_api: BotAPIEmulator, storage: BeanieStorage
) -> None:
    token = bot_api.add_bot().token
    first = make_runner(bot_api, token, storage, Router())
    second = make_runner(bot_api, token, storage, Router())
    first.start()
    await wait_for(lambda: first.status == BotStatus.RUNNING)
    second.start()
    await wait_for(lambda: BotStatus.CONFLICT in {first.status, second.status})
    conflicted = first if first.status == BotStatus.CONFLICT else second
    assert "409 Conflict" in conflicted.status_detail
    await asyncio.gather(first.stop(5), second.stop(5))
    await first.bot.session.close()
    await second.bot.session.close()


async def test_a_revoked_token_stops_the_runner(
    bot_api: BotAPIEmulator, storage: BeanieStorage
) -> None:
    token = bot_api.add_bot().token
    bot_api.revoke(token)
    seen: list[BotStatus] = []
    runner = make_runner(
        bot_api, token, storage, Router(), on_status=lambda _r, status, _d: seen.append(status)
    )
    runner.start()
    await wait_for(lambda: runner.done)
    assert seen == [BotStatus.STARTING, BotStatus.UNAUTHORIZED], "never running, not even briefly"
    await runner.stop(5)
    assert runner.status == BotStatus.UNAUTHORIZED
    await runner.bot.session.close()


async def test_one_users_updates_run_in_order_while_others_run_alongside(
    bot_api: BotAPIEmulator, storage: BeanieStorage
) -> None:
    token = bot_api.add_bot().token
    router = Router()
    log: list[tuple[int, str]] = []

    @router.message(F.text)
    async def slow_echo(message: Message) -> None:
        delay = 0.2 if message.text == "first" else 0.0
        await asyncio.sleep(delay)
        log.append((message.chat.id, message.text or ""))
        await message.answer(message.text or "")

    runner = make_runner(bot_api, token, storage, router, max_concurrent_updates=4)
    runner.start()
    bot_api.send_message(token, 1, "first")
    bot_api.send_message(token, 1, "second")
    bot_api.send_message(token, 2, "other user")
    await bot_api.wait_for_reply(token, 1, count=2, timeout=10)
    assert [text for chat, text in log if chat == 1] == ["first", "second"]
    assert log.index((2, "other user")) < log.index((1, "first")), "user 2 did not wait for user 1"
    await runner.stop(5)
    await runner.bot.session.close()


async def test_stop_requested_together_with_a_reload_still_stops(
    bot_api: BotAPIEmulator, mongo_uri: str, database_name: str, tmp_path: Path
) -> None:
    """SIGHUP and SIGTERM in one loop iteration: on Python 3.11 ``asyncio.wait_for``
    returned the set event's result and swallowed the watcher's cancellation, so
    the supervisor waited for its registry watcher forever."""
    path = tmp_path / "botyard.yaml"
    (tmp_path / "quiet.py").write_text("from aiogram import Router\nrouter = Router()\n")
    path.write_text(
        f"storage:\n  uri: {mongo_uri}\n  database: {database_name}\n  timeout: 3s\nbots:\n"
        f"  - name: quiet\n    token: {bot_api.add_bot().token}\n"
        f"    routers: [quiet:router]\n    api_server: {bot_api.url}\n"
    )
    supervisor = Supervisor(load_registry(path))
    running = asyncio.create_task(supervisor.run())
    try:
        await wait_for(lambda: supervisor.cleanup is not None)
        assert supervisor.client is not None
        assert supervisor.client.options.timeout == 3.0, "storage.timeout reaches the client"
        await asyncio.sleep(0.05)  # the watcher is waiting for a reload request
        supervisor.request_reload()
        supervisor.request_stop()
        async with asyncio.timeout(10):
            assert await running == 0
    finally:
        running.cancel()


async def test_the_dispatcher_is_built_for_the_first_update(
    bot_api: BotAPIEmulator, storage: BeanieStorage
) -> None:
    token = bot_api.add_bot().token
    router = echo_router()

    @router.callback_query()
    async def press(query: CallbackQuery) -> None:
        await query.answer()

    runner = make_runner(bot_api, token, storage, router)
    assert runner.allowed_updates == ["callback_query", "message"]
    runner.start()
    await wait_for(lambda: runner.status == BotStatus.RUNNING)
    assert runner.status_detail == "polling"
    assert bot_api.calls(token, "getUpdates") == 1
    assert bot_api.calls(token, "getMe") == 0, "the open long poll proves the token"
    assert router.parent_router is None, "an idle bot polls without a Dispatcher"
    bot_api.send_message(token, 1, "hi")
    assert (await bot_api.wait_for_reply(token, 1))["text"] == "hi"
    # Built once: a second build would have included the router again, which aiogram refuses.
    assert router.parent_router is runner.dispatcher
    await runner.stop(5)
    assert router.parent_router is None, "detached, for a restarted bot's new Dispatcher"
    await runner.bot.session.close()


async def test_startup_and_shutdown_handlers_run_at_start_and_stop(
    bot_api: BotAPIEmulator, storage: BeanieStorage
) -> None:
    token = bot_api.add_bot().token
    router = Router()
    events: list[str] = []

    @router.startup()
    async def started(bot: Bot) -> None:
        events.append(f"startup {bot.id}")

    @router.shutdown()
    async def stopped() -> None:
        events.append("shutdown")

    runner = make_runner(bot_api, token, storage, router)
    runner.start()
    await wait_for(lambda: bot_api.calls(token, "getUpdates") >= 1)
    assert events == [f"startup {runner.bot.id}"], "no update needed for startup handlers"
    await runner.stop(5)
    assert events == [f"startup {runner.bot.id}", "shutdown"]
    await runner.bot.session.close()


async def test_a_failing_startup_handler_is_logged_and_retried_like_a_crash(
    bot_api: BotAPIEmulator, storage: BeanieStorage, caplog: pytest.LogCaptureFixture
) -> None:
    """A startup handler that raises (its database not up yet) must not leave the bot
    "starting" for ever with nothing in the log: it is a crash, retried with backoff."""
    token = bot_api.add_bot().token
    router = Router()
    attempts = 0

    @router.startup()
    async def started() -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise ConnectionRefusedError("the bot's own service is not up yet")

    @router.message(F.text)
    async def echo(message: Message) -> None:
        await message.answer(message.text or "")

    runner = make_runner(bot_api, token, storage, router)
    with caplog.at_level(logging.ERROR, logger="botyard.bot"):
        runner.start()
        bot_api.send_message(token, 1, "hello")
        assert (await bot_api.wait_for_reply(token, 1, timeout=30))["text"] == "hello"
    assert attempts == 2, "started once it worked, and only once"
    assert runner.status == BotStatus.RUNNING
    assert "ConnectionRefusedError: the bot's own service is not up yet" in caplog.text
    await runner.stop(5)
    await runner.bot.session.close()


async def test_a_webhook_left_set_is_deleted_when_polling_meets_it(
    bot_api: BotAPIEmulator, storage: BeanieStorage, caplog: pytest.LogCaptureFixture
) -> None:
    token = bot_api.add_bot().token
    idle = bot_api.add_bot().token
    router = echo_router()

    runner = make_runner(bot_api, token, storage, router)
    await runner.bot.set_webhook("https://hooks.example/old")
    caplog.set_level(logging.INFO, logger="botyard.bot")
    runner.start()
    await wait_for(lambda: bot_api.calls(token, "deleteWebhook") == 1)
    assert bot_api.webhook_info(token)["url"] == ""
    bot_api.send_message(token, 1, "hi")
    assert (await bot_api.wait_for_reply(token, 1))["text"] == "hi"
    assert bot_api.calls(token, "deleteWebhook") == 1
    assert "bot=bot had a webhook set; deleting it to poll" in caplog.messages
    await runner.stop(5)
    await runner.bot.session.close()

    plain = make_runner(bot_api, idle, storage, Router())
    plain.start()
    await wait_for(lambda: bot_api.calls(idle, "getUpdates") >= 1)
    assert bot_api.calls(idle, "deleteWebhook") == 0, "no webhook: no call for it at start"
    await plain.stop(5)
    await plain.bot.session.close()


async def test_full_collections_resume_once_every_bot_started(
    bot_api: BotAPIEmulator, mongo_uri: str, database_name: str, tmp_path: Path
) -> None:
    """``botyard run`` collects and freezes before the bots poll, pauses full collections while
    they start (a revoked bot counts as started), then resumes with a larger young generation."""
    revoked = bot_api.add_bot().token
    bot_api.revoke(revoked)
    polling_token = bot_api.add_bot().token
    bots = {"polling": polling_token, "revoked": revoked}
    path = tmp_path / "botyard.yaml"
    path.write_text(quiet_registry(tmp_path, bot_api, mongo_uri, database_name, bots))
    polls_before = bot_api.calls(polling_token, "getUpdates")
    frozen_before_polling: list[tuple[int, int]] = []

    def before_polling() -> None:
        gc_pause.collect_and_freeze()
        polls = bot_api.calls(polling_token, "getUpdates") - polls_before
        frozen_before_polling.append((polls, gc.get_freeze_count()))

    supervisor = Supervisor(load_registry(path), before_polling=before_polling)
    usual = gc_pause.pause_full_collections()
    assert gc.get_threshold()[2] == gc_pause.FULL_COLLECTIONS_PAUSED
    running = asyncio.create_task(
        gc_pause.run_resuming_full_collections(supervisor.run(), supervisor.started, usual)
    )
    try:
        async with asyncio.timeout(10):
            await supervisor.started.wait()
        running_thresholds = (max(usual[0], gc_pause.YOUNG_THRESHOLD), usual[1], usual[2])
        await wait_for(lambda: gc.get_threshold() == running_thresholds)
        [(polls, frozen)] = frozen_before_polling
        assert polls == 0, "the first full collection runs before any bot polls"
        assert frozen > 0
        assert gc.get_freeze_count() > frozen, "what the start made is frozen out of collections"
        assert {name: runner.status for name, runner in supervisor.runners.items()} == {
            "polling": BotStatus.RUNNING,
            "revoked": BotStatus.UNAUTHORIZED,
        }
        supervisor.request_stop()
        async with asyncio.timeout(10):
            assert await running == 0
    finally:
        running.cancel()
        gc.set_threshold(*usual)
        gc.unfreeze()


async def test_bots_start_in_batches_the_first_polling_while_the_next_are_made(
    bot_api: BotAPIEmulator,
    mongo_uri: str,
    database_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The last bot cannot be built: the others still start, and the start still ends."""
    monkeypatch.setattr(supervisor_module, "START_BATCH", 2)
    tokens = [bot_api.add_bot().token for _ in range(6)]
    bots = {f"bot{index}": token for index, token in enumerate(tokens)}
    path = tmp_path / "botyard.yaml"
    path.write_text(quiet_registry(tmp_path, bot_api, mongo_uri, database_name, bots))
    made_when: dict[str, list[BotStatus]] = {}

    def make_bot(config: Any, sessions: Any) -> Bot:
        made_when[config.name] = [runner.status for runner in supervisor.runners.values()]
        if config.name == "bot5":
            raise RuntimeError("no session for this bot")
        return supervisor_module._make_bot(config, sessions)

    supervisor = Supervisor(load_registry(path), watch=False, bot_factory=make_bot)
    running = asyncio.create_task(supervisor.run())
    try:
        async with asyncio.timeout(10):
            await supervisor.started.wait()
        assert made_when["bot1"] == [BotStatus.STOPPED], "the first batch is made at once"
        assert made_when["bot2"] == [BotStatus.STARTING] * 2, "its runners ran before the next"
        assert made_when["bot4"][:2] == [BotStatus.STARTING] * 2
        assert all(bot_api.calls(token, "getUpdates") >= 1 for token in tokens[:5])
        assert set(supervisor.runners) == {f"bot{index}" for index in range(5)}
        assert "bot=bot5 cannot start: no session for this bot" in caplog.messages
    finally:
        supervisor.request_stop()
        async with asyncio.timeout(10):
            assert await running == 0


async def test_a_stop_during_the_start_makes_no_more_bots(
    bot_api: BotAPIEmulator,
    mongo_uri: str,
    database_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(supervisor_module, "START_BATCH", 1)
    bots = {f"bot{index}": bot_api.add_bot().token for index in range(4)}
    path = tmp_path / "botyard.yaml"
    path.write_text(quiet_registry(tmp_path, bot_api, mongo_uri, database_name, bots))
    made: list[str] = []

    def make_bot(config: Any, sessions: Any) -> Bot:
        made.append(config.name)
        if config.name == "bot1":
            supervisor.request_stop()  # SIGTERM while the second bot is being made
        return supervisor_module._make_bot(config, sessions)

    supervisor = Supervisor(load_registry(path), watch=False, bot_factory=make_bot)
    async with asyncio.timeout(10):
        assert await supervisor.run() == 0
    assert made == ["bot0", "bot1"]
    assert supervisor.runners == {}


async def test_restart_backoff_starts_over_after_a_healthy_period(
    bot_api: BotAPIEmulator, storage: BeanieStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_wait(self: Backoff) -> None:
        next(self)  # the delay grows as if slept
        await asyncio.sleep(0)

    monkeypatch.setattr(Backoff, "asleep", no_wait)
    token = bot_api.add_bot().token
    delays: list[str] = []
    runner = make_runner(
        bot_api,
        token,
        storage,
        echo_router(),
        session=CrashingSession(bot_api, healthy_for=[0.0, 0.0, 0.0, 0.5, 0.0, 0.0]),
        on_status=lambda _runner, status, detail: (
            delays.append(detail.rpartition(" ")[2]) if status == BotStatus.BACKING_OFF else None
        ),
        restart_backoff=BackoffConfig(min_delay=1.0, max_delay=1000.0, factor=10.0, jitter=0.0),
        healthy_period=0.3,
    )
    runner.start()
    await wait_for(lambda: len(delays) == 6)
    # three quick crashes back off 1, 10, 100 s; after a healthy run, 1 s again
    assert delays == ["1s", "10s", "100s", "1s", "10s", "100s"]
    await runner.stop(5)
    await runner.bot.session.close()


def quiet_registry(
    folder: Path,
    bot_api: BotAPIEmulator,
    mongo_uri: str,
    database_name: str,
    tokens: dict[str, str] | None = None,
) -> str:
    """A registry of bots (name: token; by default one, ``quiet``) whose routers
    (``folder/quiet_factory.py``; a factory, as the module is imported once per process)
    handle nothing."""
    (folder / "quiet_factory.py").write_text(
        "from aiogram import Router\ndef router():\n    return Router()\n"
    )
    bots = "".join(
        f"  - name: {name}\n    token: {token}\n"
        f"    routers: [quiet_factory:router]\n    api_server: {bot_api.url}\n"
        for name, token in (tokens or {"quiet": bot_api.add_bot().token}).items()
    )
    return f"storage:\n  uri: {mongo_uri}\n  database: {database_name}\nbots:\n{bots}"


async def test_a_reload_loads_and_diffs_the_registry_off_the_event_loop(
    bot_api: BotAPIEmulator,
    mongo_uri: str,
    database_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Validating or comparing a large registry must not freeze every bot."""
    path = tmp_path / "botyard.yaml"
    path.write_text(quiet_registry(tmp_path, bot_api, mongo_uri, database_name))
    threads: list[str] = []

    def recording(function: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            threads.append(threading.current_thread().name)
            return function(*args, **kwargs)

        return run

    monkeypatch.setattr(supervisor_module, "diff_registries", recording(diff_registries))
    supervisor = Supervisor(load_registry(path), loader=recording(load_registry), watch=False)
    running = asyncio.create_task(supervisor.run())
    try:
        async with asyncio.timeout(30):
            await supervisor.started.wait()
        assert await supervisor.reload()
    finally:
        supervisor.request_stop()
        await running
    assert len(threads) == 2
    assert threading.main_thread().name not in threads


async def test_the_registry_watch_reads_the_file_only_when_its_stat_changes(
    bot_api: BotAPIEmulator,
    mongo_uri: str,
    database_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each tick is one ``stat`` per file: an untouched registry is never read again, a
    save that changes nothing reloads nothing, a change reloads once."""
    monkeypatch.setattr(supervisor_module, "WATCH_INTERVAL", 0.02)
    path = tmp_path / "botyard.yaml"
    text = quiet_registry(tmp_path, bot_api, mongo_uri, database_name)
    path.write_text(text)
    reads: list[Path] = []
    loads: list[Path] = []
    fingerprint = supervisor_module._fingerprint

    def counted_read(registry: Path) -> str:
        reads.append(registry)
        return fingerprint(registry)

    def counted_load(registry: Path) -> Any:
        loads.append(registry)
        return load_registry(registry)

    monkeypatch.setattr(supervisor_module, "_fingerprint", counted_read)
    supervisor = Supervisor(load_registry(path), loader=counted_load, watch=True)
    running = asyncio.create_task(supervisor.run())
    try:
        async with asyncio.timeout(30):
            await supervisor.started.wait()
        ticks = 0

        def stat_counted(*args: Any, **kwargs: Any) -> Any:
            nonlocal ticks
            ticks += 1
            return stamp(*args, **kwargs)

        stamp = supervisor_module._stamp
        monkeypatch.setattr(supervisor_module, "_stamp", stat_counted)
        await wait_for(lambda: ticks >= 10)
        assert reads == [path], "read once at start, never while the stat stays the same"

        def save(content: str) -> None:  # as editors do: never seen half-written
            (tmp_path / "botyard.yaml.new").write_text(content)
            (tmp_path / "botyard.yaml.new").replace(path)

        save(text)  # saved unchanged: read, compared, not reloaded
        await wait_for(lambda: len(reads) == 2)
        save(text + "# a comment\n")
        await wait_for(lambda: len(loads) == 1)
        await wait_for(lambda: ticks >= 30)
        assert len(loads) == 1, "one change, one reload"
    finally:
        supervisor.request_stop()
        await running
