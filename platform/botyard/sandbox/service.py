"""The sandbox: the registry's Supervisor on the in-process emulator, plus the page's server.

It runs the very Supervisor, storage and handlers ``botyard run`` uses; only
the Telegram side is the emulator (see :mod:`botyard.sandbox.emulated`). The
methods below are what the page can do, each checking its input and raising
:class:`~botyard.sandbox.views.PageError` with a message for the user.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from aiogram.fsm.context import FSMContext
from aiohttp import web
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from botyard.emulator import BotAPIEmulator, ControlError, EmulatedBot, SimulatedUser, Subscription
from botyard.errors import BotyardError
from botyard.logs import TokenRedactingFilter
from botyard.registry.models import BotConfig
from botyard.runtime.supervisor import Supervisor
from botyard.sandbox.emulated import EmulatedRegistryLoader, emulated_bot_factory, register
from botyard.sandbox.problems import HandlerFailure, ProblemLog
from botyard.sandbox.routes import build_app, next_event
from botyard.sandbox.transcripts import ChatKey, Note, Transcripts
from botyard.sandbox.views import (
    JSON,
    MAX_WAIT,
    PageError,
    bot_collections,
    bot_status,
    chat_messages,
    check_text,
    fsm_record,
    record_counts,
    saved_documents,
    storage_key,
)
from botyard.storage import BeanieStorage, update_scope

#: The simulated users every sandbox starts with (ids are also their private chat ids).
DEFAULT_USERS = ((1001, "Alice"), (1002, "Bob"), (1003, "Carol"))
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: How often a chat read waiting for a reply checks whether the bot finished handling it.
SETTLE_POLL = 0.02
#: How long the list of the bots' own collections is reused before it is read again.
COLLECTIONS_REFRESH = 5.0

logger = logging.getLogger("botyard.sandbox")


class SandboxError(BotyardError, RuntimeError):
    """The sandbox could not start (the port is taken, say); the message says why."""


class Sandbox:
    """One registry served to a browser; use ``async with`` or :meth:`run`."""

    def __init__(
        self,
        registry_path: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        redactor: TokenRedactingFilter | None = None,
        shutdown_timeout: float = 5.0,
        watch: bool = True,
    ) -> None:
        self.registry_path = registry_path
        self.host = host
        self.port = port
        self.emulator = BotAPIEmulator()
        self.supervisor: Supervisor | None = None
        self.url = ""
        self._redactor = redactor
        self._shutdown_timeout = shutdown_timeout
        self._watch = watch
        self._users: dict[int, SimulatedUser] = {}
        #: The latest button press of each (bot, user), to show the bot's answer to it.
        self._presses: dict[tuple[str, int], str] = {}
        self._web: web.AppRunner | None = None
        self._task: asyncio.Task[int] | None = None
        self.transcripts = Transcripts()
        self.problems = ProblemLog(self._handler_failed)
        self._keeper: asyncio.Task[None] | None = None
        #: Chats changed since their transcript was last saved.
        self._unsaved: set[ChatKey] = set()
        self._changed = asyncio.Event()
        #: What the page showed last, shown again while the sandbox stops.
        self._last_statuses: JSON | None = None
        self._last_fsm: dict[ChatKey, JSON] = {}
        self._last_documents: dict[ChatKey, list[JSON]] = {}
        self._registry_seen: object = None
        self._collections: tuple[float, list[str]] = (float("-inf"), [])

    # lifecycle

    async def start(self) -> str:
        """Start the emulator, the page's server and the bots; return the page's URL.

        Raises :class:`~botyard.registry.models.RegistryError` for an invalid registry and
        :class:`SandboxError` when the page cannot listen.
        """
        await self.emulator.start("127.0.0.1", 0)  # bots are in this process: never exposed
        try:
            loader = EmulatedRegistryLoader(self.emulator.url)
            registry = await asyncio.to_thread(loader, self.registry_path)
            self.supervisor = Supervisor(
                registry,
                shutdown_timeout=self._shutdown_timeout,
                watch=self._watch,
                redactor=self._redactor,
                loader=loader,
                bot_factory=emulated_bot_factory(self.emulator),
                serve_http=False,  # no webhook or ops server: this page is the only one
            )
            for config in registry.enabled_bots:
                register(self.emulator, config)
            for user_id, name in DEFAULT_USERS:
                self._users[user_id] = self.emulator.user(user_id, name)
            self._web = web.AppRunner(build_app(self), access_log=None, shutdown_timeout=1.0)
            await self._web.setup()
            try:
                await web.TCPSite(self._web, self.host, self.port).start()
            except OSError as error:
                raise SandboxError(
                    f"cannot serve the sandbox on {self.host}:{self.port}: {error.strerror}; "
                    "choose another --port"
                ) from None
            host, port = self._web.addresses[0][:2]
            self.url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
            self._handle_stop_signals()
            self.problems.attach()
            self._task = asyncio.create_task(self.supervisor.run(), name="botyard-sandbox")
            self._keeper = asyncio.create_task(
                self._keep_transcripts(self.emulator.subscribe(maxsize=1000)),
                name="botyard-sandbox-transcripts",
            )
        except BaseException:
            await self._close()
            raise
        return self.url

    def _handle_stop_signals(self) -> None:
        """Stop gracefully on SIGINT/SIGTERM from the moment the URL is announced.

        The Supervisor installs the same handlers once its database is open;
        until then a signal would kill the process with the database starting.
        """
        loop = asyncio.get_running_loop()
        for signum in STOP_SIGNALS:
            with contextlib.suppress(RuntimeError, ValueError):  # not the main thread
                loop.add_signal_handler(signum, self.request_stop)

    def request_stop(self) -> None:
        if self.supervisor is not None:
            self.supervisor.request_stop()

    async def stop(self, *, request: bool = True) -> int:
        """Stop the bots, then the page and the emulator; the Supervisor's exit code.

        With ``request=False``, wait for the Supervisor to stop by itself (on a signal).
        """
        if request:
            self.request_stop()
        try:
            return await self._task if self._task is not None else 0
        finally:
            await self._close()

    async def _close(self) -> None:
        self.problems.detach()
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.gather(self._keeper, return_exceptions=True)
            self._keeper = None
        loop = asyncio.get_running_loop()
        for signum in STOP_SIGNALS:
            with contextlib.suppress(RuntimeError, ValueError):
                loop.remove_signal_handler(signum)
        if self._web is not None:
            await self._web.cleanup()
            self._web = None
        await self.emulator.stop()

    async def run(self, announce: Callable[[str], None] = print) -> int:
        """Serve until SIGINT/SIGTERM; ``announce`` is told the page's URL once it listens."""
        announce(await self.start())
        return await self.stop(request=False)

    async def __aenter__(self) -> Sandbox:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # what the page reads

    @property
    def database(self) -> AsyncDatabase[JSON] | None:
        """The shared database, once the Supervisor opened it."""
        return self.supervisor.database if self.supervisor is not None else None

    def bot(self, name: str) -> BotConfig:
        """The registry's bot called ``name``; 404 naming the known bots otherwise."""
        assert self.supervisor is not None
        try:
            return self.supervisor.registry.bot(name)
        except KeyError as error:
            raise PageError(404, str(error.args[0])) from None

    def user(self, user_id: str | int) -> SimulatedUser:
        """A simulated user by id; 404 naming the known users otherwise."""
        try:
            found = self._users.get(int(user_id))
        except ValueError:
            found = None
        if found is None:
            known = ", ".join(f"{user.id} ({user.first_name})" for user in self._users.values())
            raise PageError(404, f"no simulated user {str(user_id)!r} (users: {known})")
        return found

    def users(self) -> list[JSON]:
        return [user.as_json() for user in self._users.values()]

    def add_user(self, first_name: object) -> SimulatedUser:
        """A new simulated user with the next free id."""
        if not isinstance(first_name, str) or not first_name.strip():
            raise PageError(400, "'first_name' is required: the new user's name, as a string")
        if len(first_name) > 64:
            raise PageError(400, "a Telegram first name holds at most 64 characters")
        user_id = max(self._users, default=1000) + 1
        user = self._users[user_id] = self.emulator.user(user_id, first_name.strip())
        return user

    async def save_user(self, user: SimulatedUser) -> None:
        """Keep an added user for the next runs; the page goes on if the database cannot."""
        if self.database is None:
            return
        try:
            await self.transcripts.save_user(self.database, user.as_json())
        except PyMongoError as error:
            logger.warning("sandbox: cannot save user %s: %s", user.id, error)

    def emulated(self, config: BotConfig) -> EmulatedBot | None:
        """The emulator's bot for ``config``; ``None`` until the bot first started."""
        if config.token is None:
            return None
        token = config.token_value
        return next((bot for bot in self.emulator.bots if bot.token == token), None)

    @property
    def stopping(self) -> bool:
        return self.supervisor is not None and self.supervisor.stopping

    async def statuses(self) -> JSON:
        """The bot list: every bot in the registry, disabled ones too, in file order.

        While the sandbox stops, the last list shown, every bot ``stopping``: the
        runners are going away and the database is closing, which says nothing
        about the bots.
        """
        assert self.supervisor is not None
        if self.stopping and self._last_statuses is not None:
            bots = [{**bot, "status": "stopping"} for bot in self._last_statuses["bots"]]
            return {**self._last_statuses, "storage": "stopping", "bots": bots}
        registry = self.supervisor.registry
        if registry is not self._registry_seen:  # a reload went through
            self._registry_seen = registry
            self.problems.reload_rejected = None
        storage, counts = "starting", None
        if self.database is not None:
            try:
                counts = await record_counts(self.database, [b.namespace for b in registry.bots])
                storage = "ready"
            except PyMongoError as error:
                storage = f"unreachable: {error}"
        bots = []
        for config in registry.bots:
            runner = self.supervisor.runners.get(config.name)
            if runner is not None:
                self.problems.cannot_start.pop(config.name, None)
            bots.append(
                bot_status(
                    config,
                    runner,
                    self.emulated(config),
                    None if counts is None else counts.get(config.namespace, 0),
                    self.problems.cannot_start.get(config.name),
                )
            )
        statuses = {
            "registry": registry.path.name,
            "storage": storage,
            "reload_rejected": self.problems.reload_rejected,
            "bots": bots,
        }
        if not self.stopping:
            self._last_statuses = statuses
        return statuses

    async def chat(
        self, bot_name: str, user_id: str | int, *, after: int | None = None, wait: float = 0.0
    ) -> JSON:
        """The user's chat with the bot and their FSM record.

        With ``wait``, first wait up to that many seconds for a bot message
        newer than message ``after`` (by default the user's last message).
        """
        config, user = self.bot(bot_name), self.user(user_id)
        emulated = self.emulated(config)
        if wait > 0 and emulated is not None:
            await self._wait_for_reply(config, emulated, user, after, min(wait, MAX_WAIT))
        return {
            "bot": config.name,
            "user": user.as_json(),
            "messages": self._entries(config.name, emulated, user.id),
            "fsm": await self.fsm(config, emulated, user),
            "documents": await self.documents(config, user),
            "callback_answer": self._callback_answer(config, emulated, user),
            "problem": self._bot_problem(config),
        }

    async def documents(self, config: BotConfig, user: SimulatedUser) -> list[JSON]:
        """What the bot saved for the user in collections of its own (see
        :func:`~botyard.sandbox.views.saved_documents`); nothing while the database is not up."""
        chat = (config.name, user.id)
        emulated = self.emulated(config)
        if self.database is None or self.stopping or emulated is None:
            return self._last_documents.get(chat, [])
        loop = asyncio.get_running_loop()
        try:
            read_at, names = self._collections
            if loop.time() - read_at > COLLECTIONS_REFRESH:
                names = bot_collections(await self.database.list_collection_names())
                self._collections = (loop.time(), names)
            documents = await saved_documents(self.database, names, emulated.id, user.id)
        except PyMongoError as error:
            logger.warning("sandbox: cannot read the bots' documents: %s", error)
            return self._last_documents.get(chat, [])
        self._last_documents[chat] = documents
        return documents

    def _entries(self, bot_name: str, emulated: EmulatedBot | None, user_id: int) -> list[JSON]:
        return self.transcripts.entries((bot_name, user_id), chat_messages(emulated, user_id))

    def _bot_problem(self, config: BotConfig) -> str | None:
        """Why the bot cannot answer, for the chat: it could not start, or its token is revoked."""
        assert self.supervisor is not None
        if config.name in self.supervisor.runners or not config.enabled:
            emulated = self.emulated(config)
            if emulated is not None and emulated.revoked:
                return (
                    f"{config.name}'s token was revoked: it receives nothing until the sandbox "
                    "restarts with a new one"
                )
            return None
        cannot = self.problems.cannot_start.get(config.name)
        return f"{config.name} could not start: {cannot}" if cannot else None

    def _callback_answer(
        self, config: BotConfig, emulated: EmulatedBot | None, user: SimulatedUser
    ) -> JSON | None:
        query_id = self._presses.get((config.name, user.id))
        if emulated is None or query_id is None:
            return None
        return self.emulator.callback_answer(emulated.token, query_id)

    async def _wait_for_reply(
        self,
        config: BotConfig,
        emulated: EmulatedBot,
        user: SimulatedUser,
        after: int | None,
        timeout: float,
    ) -> None:
        """Wait for the bot's reply, then for the bot to finish handling what it received.

        The reply is sent while the handler runs, and the FSM writes are made
        when it returns: waiting for both lets a client read the new state.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            await self.emulator.wait_for_reply(
                emulated.token, user.id, timeout=timeout, after_message_id=after
            )
        except TimeoutError:
            return
        assert self.supervisor is not None
        while loop.time() < deadline:
            runner = self.supervisor.runners.get(config.name)
            if runner is None:
                return
            counters = runner.counters
            if counters.handled + counters.errors >= counters.received:
                return
            await asyncio.sleep(SETTLE_POLL)

    async def fsm(
        self, config: BotConfig, emulated: EmulatedBot | None, user: SimulatedUser
    ) -> JSON:
        """The user's FSM state and data in the bot's namespace, straight from MongoDB.

        While the sandbox stops, the last record read (the database is closing).
        """
        chat = (config.name, user.id)
        if self.stopping and chat in self._last_fsm:
            return self._last_fsm[chat]
        if self.database is None:
            return {"state": None, "data": {}, "error": "the database is starting"}
        bot_id = emulated.id if emulated is not None else 0
        try:
            record = await fsm_record(self.database, config, storage_key(config, bot_id, user.id))
        except PyMongoError as error:
            return {"state": None, "data": {}, "error": f"cannot read the database: {error}"}
        if not self.stopping:
            self._last_fsm[chat] = record
        return record

    # what the page does

    def _running_bot(self, bot_name: str) -> tuple[BotConfig, EmulatedBot]:
        config = self.bot(bot_name)
        if not config.enabled:
            raise PageError(
                409, f"bot {config.name!r} is disabled (enabled: false in the registry)"
            )
        emulated = self.emulated(config)
        if emulated is None:
            problem = self._bot_problem(config)
            raise PageError(409, problem or f"bot {config.name!r} has not started")
        if emulated.revoked:
            raise PageError(
                409,
                f"{config.name}'s token was revoked, so Telegram would not deliver this to the "
                "bot; restart the sandbox to give it a new token",
            )
        return config, emulated

    def send(self, bot_name: str, user_id: str | int, text: object) -> JSON:
        """The user writes ``text`` to the bot; a leading ``/command`` is a command."""
        _, emulated = self._running_bot(bot_name)
        user = self.user(user_id)
        update = self.emulator.send_message(emulated.token, user.id, check_text(text))
        return {"update_id": update["update_id"], "message_id": update["message"]["message_id"]}

    def press(
        self, bot_name: str, user_id: str | int, message_id: object, callback_data: object
    ) -> JSON:
        """The user presses an inline button of one of the bot's messages."""
        _, emulated = self._running_bot(bot_name)
        user = self.user(user_id)
        if not isinstance(message_id, int) or isinstance(message_id, bool):
            raise PageError(400, "'message_id' is required: the bot message's id, an integer")
        if not isinstance(callback_data, str):
            raise PageError(400, "'callback_data' is required: the button's data, a string")
        try:
            update = self.emulator.press_button(emulated.token, user.id, message_id, callback_data)
        except ControlError as error:
            raise PageError(400, str(error)) from None
        query = update["callback_query"]
        self._presses[(bot_name, user.id)] = query["id"]
        return {"update_id": update["update_id"], "callback_query_id": query["id"]}

    async def reset(self, bot_name: str, user_id: str | int) -> JSON:
        """Clear the user's FSM state and data, as ``state.clear()`` in a handler would."""
        config, user = self.bot(bot_name), self.user(user_id)
        if self.database is None:
            raise PageError(503, "the database is starting; try again in a moment")
        emulated = self.emulated(config)
        key = storage_key(config, emulated.id if emulated is not None else 0, user.id)
        storage = BeanieStorage(self.database, config.namespace, state_ttl=config.state_ttl)
        async with update_scope():  # one delete instead of two writes
            await FSMContext(storage, key).clear()
        self._note(
            config.name,
            user.id,
            Note("reset", "FSM state and data reset: the bot starts this conversation afresh"),
        )
        return await self.fsm(config, emulated, user)

    # what the sandbox says in the chats, and keeps

    def _note(self, bot_name: str, user_id: int, note: Note) -> None:
        emulated = self.emulated(self.bot(bot_name))
        chat = emulated.chats.get(user_id) if emulated is not None else None
        self.transcripts.note((bot_name, user_id), note, chat.last_message_id if chat else 0)
        self._unsaved.add((bot_name, user_id))
        self._changed.set()

    def _handler_failed(self, failure: HandlerFailure) -> None:
        """A handler raised, or its update was given up: the chat where it happened says
        what, the traceback folded."""
        user_id = failure.user_id
        if user_id is None or user_id not in self._users:
            return
        with contextlib.suppress(PageError):  # the bot left the registry meanwhile
            self._note(
                failure.bot,
                user_id,
                Note("failure", failure.summary, failure.traceback),
            )

    async def _keep_transcripts(self, subscription: Subscription) -> None:
        """Load earlier runs' transcripts and users, then save every chat that changes."""
        with subscription:
            database = await self._open_database()
            try:
                for user in await self.transcripts.load(database):
                    if user["id"] not in self._users:
                        self._users[user["id"]] = self.emulator.user(user["id"], user["first_name"])
            except PyMongoError as error:
                logger.warning("sandbox: cannot read earlier transcripts: %s", error)
            while not subscription.closed:
                for chat in self._take_unsaved():
                    await self._save(database, chat)
                waiting = asyncio.ensure_future(next_event(subscription))
                changed = asyncio.ensure_future(self._changed.wait())
                done, _ = await asyncio.wait({waiting, changed}, return_when="FIRST_COMPLETED")
                for task in (waiting, changed):
                    task.cancel()
                self._changed.clear()
                for event_done in done:
                    if event_done is waiting and not waiting.cancelled():
                        self._mark_changed(waiting.result())

    async def _open_database(self) -> AsyncDatabase[JSON]:
        assert self.supervisor is not None
        await self.supervisor.started.wait()  # set once the bots started, the database before
        assert self.database is not None
        return self.database

    def _take_unsaved(self) -> list[ChatKey]:
        chats, self._unsaved = sorted(self._unsaved), set()
        return chats

    def _mark_changed(self, event: Any) -> None:
        """Note the chat an emulator event changed, to save its transcript."""
        if event is None or self.supervisor is None:
            return
        payload = event.payload.get("update", event.payload)
        chat_id = _chat_of(payload)
        name = next(
            (
                config.name
                for config in self.supervisor.registry.bots
                if (bot := self.emulated(config)) is not None and bot.id == event.bot_id
            ),
            None,
        )
        if name is not None and chat_id is not None:
            self._unsaved.add((name, chat_id))

    async def _save(self, database: AsyncDatabase[JSON], chat: ChatKey) -> None:
        bot_name, user_id = chat
        with contextlib.suppress(PageError):
            emulated = self.emulated(self.bot(bot_name))
            try:
                await self.transcripts.save(
                    database, chat, self._entries(bot_name, emulated, user_id)
                )
            except PyMongoError as error:
                if not self.stopping:
                    logger.warning("sandbox: cannot save the chat %s/%s: %s", *chat, error)


def _chat_of(payload: JSON) -> int | None:
    """The chat a message or an update belongs to."""
    for key in ("message", "edited_message"):
        if key in payload:
            payload = payload[key]
    if "callback_query" in payload:
        return int(payload["callback_query"]["from"]["id"])
    chat = payload.get("chat")
    return int(chat["id"]) if isinstance(chat, dict) and "id" in chat else None
