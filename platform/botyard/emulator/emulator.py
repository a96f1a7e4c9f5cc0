"""The Telegram Bot API emulator: its state, lifecycle and Python control API.

Bots talk to it over real HTTP exactly as to ``api.telegram.org`` (point
aiogram's ``TelegramAPIServer.from_base`` at :attr:`BotAPIEmulator.url`), while
tests play the users through this object: inject messages and button presses,
then read what the bots sent. All methods must be called on the event loop the
emulator runs on; :class:`botyard.emulator.thread.EmulatorThread` wraps them
for synchronous code.

Wherever a method takes ``token``, the bot's id or ``@username`` work too.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import secrets
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Literal, overload

from aiohttp import web

from botyard.emulator.errors import BotAPIError, ControlError, EmulatorStoppedError, UnknownBotError
from botyard.emulator.events import EventHub, Subscription
from botyard.emulator.faults import (
    FLOOD_LIMITED_METHODS,
    Fault,
    FloodGate,
    FloodLimits,
    counts_report,
)
from botyard.emulator.methods import METHODS, canonical_name
from botyard.emulator.params import Params
from botyard.emulator.server import build_app
from botyard.emulator.state import JSON, Chat, DeliveryAttempt, EmulatedBot, SimulatedUser
from botyard.emulator.text import command_entities
from botyard.emulator.tokens import bot_id_of, generate_bot_id, generate_token, mask_token
from botyard.emulator.webhook import DeliverySettings, WebhookDelivery

logger = logging.getLogger(__name__)

#: Connections the kernel queues before the emulator accepts them (capped by the system's
#: ``net.core.somaxconn``). With aiohttp's 128, thousands of bots connecting at once
#: overflowed the queue: the kernel dropped their connection attempts and each waited for
#: TCP's retransmission (1 s, then 3 s, 7 s...), a delay Telegram does not impose.
LISTEN_BACKLOG = 4096


class BotAPIEmulator:
    """An in-process Telegram Bot API server with simulated users.

    ``webhook_retry_delay`` (doubling up to ``webhook_max_retry_delay``) and
    ``webhook_timeout`` are in seconds; tests make them small. ``flood_limits``
    enforces Telegram's flood limits from the start (see
    :meth:`enforce_flood_limits`).
    """

    def __init__(
        self,
        *,
        webhook_retry_delay: float = 1.0,
        webhook_max_retry_delay: float = 30.0,
        webhook_timeout: float = 10.0,
        flood_limits: FloodLimits | None = None,
    ) -> None:
        self.events = EventHub()
        self.webhooks = WebhookDelivery(
            DeliverySettings(webhook_retry_delay, webhook_max_retry_delay, webhook_timeout),
            self._run_webhook_reply,
        )
        self._bots: dict[str, EmulatedBot] = {}
        self._users: dict[int, SimulatedUser] = {}
        self._faults: list[Fault] = []
        self._fault_ids = 0
        self._flood_gate = FloodGate(flood_limits) if flood_limits is not None else None
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self.stopping = False
        """True while stopping: long polls and waiters return at once."""

    # -- lifecycle ---------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> BotAPIEmulator:
        """Serve the Bot API and the control API; port 0 picks a free port."""
        if self._runner is not None:
            raise RuntimeError("the emulator is already running")
        self.stopping = False
        await self.webhooks.open()
        # No access log: Bot API paths carry tokens.
        runner = web.AppRunner(build_app(self), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, host, port, backlog=LISTEN_BACKLOG).start()
        bound_host, bound_port = runner.addresses[0][:2]
        self._url = f"http://{f'[{bound_host}]' if ':' in bound_host else bound_host}:{bound_port}"
        self._runner = runner
        logger.info("Bot API emulator listening on %s", self._url)
        return self

    @property
    def url(self) -> str:
        """Base URL for ``TelegramAPIServer.from_base``, e.g. ``http://127.0.0.1:40123``."""
        if self._url is None:
            raise RuntimeError("the emulator is not running; await start() first")
        return self._url

    async def stop(self) -> None:
        """End long polls, webhook deliveries and subscriptions, then close the server."""
        if self._runner is None:
            return
        self.stopping = True
        for bot in self._bots.values():
            bot.changed.notify()
        self.events.close_all()
        await self.webhooks.close()
        await self._runner.cleanup()
        self._runner = None
        self._url = None

    async def __aenter__(self) -> BotAPIEmulator:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- bots and users ----------------------------------------------------

    def add_bot(
        self,
        username: str | None = None,
        token: str | None = None,
        *,
        first_name: str | None = None,
    ) -> EmulatedBot:
        """Register a bot; without ``token`` one in Telegram's shape is generated."""
        taken_ids = {bot.id for bot in self._bots.values()}
        if token is None:
            bot_id = generate_bot_id(taken_ids)
            token = generate_token(bot_id)
        else:
            try:
                bot_id = bot_id_of(token)
            except ValueError as exc:
                raise ControlError(str(exc)) from None
            if bot_id in taken_ids:
                raise ControlError(f"a bot with id {bot_id} was already added")
        username = (username or f"emulated{len(self._bots) + 1}_bot").removeprefix("@")
        if any(bot.username.lower() == username.lower() for bot in self._bots.values()):
            raise ControlError(f"a bot named @{username} was already added")
        bot = EmulatedBot(token, bot_id, username, first_name or username, hub=self.events)
        self._bots[token] = bot
        logger.info("emulated bot %s added", bot.label)
        return bot

    @property
    def bots(self) -> list[EmulatedBot]:
        """Every bot added, revoked ones included."""
        return list(self._bots.values())

    def bot(self, token: str | int) -> EmulatedBot:
        """Find a bot by token, id or ``@username``; :class:`UnknownBotError` names the miss."""
        ref = str(token)
        found = self._bots.get(ref)
        if found is None:
            name = ref.removeprefix("@").lower()
            found = next(
                (b for b in self._bots.values() if str(b.id) == ref or b.username.lower() == name),
                None,
            )
        if found is None:
            shown = mask_token(ref) if ":" in ref else ref
            raise UnknownBotError(
                f"unknown bot {shown!r}; the emulator has: "
                f"{', '.join(b.label for b in self._bots.values()) or 'no bots'}"
            )
        return found

    def revoke(self, token: str | int) -> None:
        """Revoke a bot's token: every later call with it gets 401, as in Telegram."""
        bot = self.bot(token)
        bot.revoked = True
        self.webhooks.restart(bot)
        logger.info("emulated bot %s revoked", bot.label)

    def user(
        self,
        user_id: int,
        first_name: str | None = None,
        username: str | None = None,
        *,
        last_name: str | None = None,
        language_code: str | None = None,
    ) -> SimulatedUser:
        """Create a simulated user, or update the fields given of an existing one."""
        found = self._users.get(user_id)
        if found is None:
            found = SimulatedUser(user_id, first_name or f"User{user_id}")
            self._users[user_id] = found
        elif first_name is not None:
            found.first_name = first_name
        for key, value in (
            ("username", username),
            ("last_name", last_name),
            ("language_code", language_code),
        ):
            if value is not None:
                setattr(found, key, value)
        return found

    # -- injecting what users do -------------------------------------------

    def _chat(self, bot: EmulatedBot, user: SimulatedUser, chat_id: int | None) -> Chat:
        chat_id = user.id if chat_id is None else chat_id
        chat = bot.chats.get(chat_id)
        if chat is not None:
            return chat
        if chat_id > 0 and chat_id != user.id:
            raise ControlError("a private chat's id is its user's id; groups have negative ids")
        info: JSON
        if chat_id > 0:
            info = {
                key: value
                for key, value in user.as_json().items()
                if key in ("id", "first_name", "last_name", "username")
            }
            info["type"] = "private"
        else:
            kind = "supergroup" if str(chat_id).startswith("-100") else "group"
            info = {"id": chat_id, "type": kind, "title": f"Group {chat_id}"}
        chat = bot.chats[chat_id] = Chat(info)
        return chat

    def send_message(
        self, token: str | int, user_id: int, text: str, chat_id: int | None = None
    ) -> JSON:
        """A user writes to the bot (private chat unless ``chat_id``); returns the update.

        A leading ``/command`` gets a ``bot_command`` entity, so aiogram's
        ``CommandStart()`` and ``Command(...)`` filters match.
        """
        bot = self.bot(token)
        user = self.user(user_id)
        chat = self._chat(bot, user, chat_id)
        message: JSON = {"chat": copy.deepcopy(chat.info), "from": user.as_json(), "text": text}
        if entities := command_entities(text):
            message["entities"] = entities
        stored = chat.add(message, from_bot=False, reply_markup=None)
        chat.last_user_action = chat.last_message_id
        return bot.queue_update("message", copy.deepcopy(stored.message))

    def press_button(
        self,
        token: str | int,
        user_id: int,
        message_id: int,
        callback_data: str,
        chat_id: int | None = None,
    ) -> JSON:
        """A user presses an inline button of a bot message; returns the callback_query update.

        The message must carry a button with that ``callback_data``, as a real
        client can only send the data of buttons it shows.
        """
        bot = self.bot(token)
        user = self.user(user_id)
        chat = bot.chats.get(user_id if chat_id is None else chat_id)
        stored = chat.messages.get(message_id) if chat is not None else None
        if chat is None or stored is None or not stored.from_bot:
            raise ControlError(
                f"{bot.label} sent no message {message_id} in chat {chat_id or user_id}"
            )
        rows = (stored.message.get("reply_markup") or {}).get("inline_keyboard", [])
        offered = [b["callback_data"] for row in rows for b in row if "callback_data" in b]
        if callback_data not in offered:
            raise ControlError(
                f"message {message_id} has no button with callback_data {callback_data!r}; "
                f"its buttons carry {offered}"
            )
        query_id = str(secrets.randbits(63))
        bot.open_callback_queries.add(query_id)
        chat.last_user_action = chat.last_message_id
        query: JSON = {
            "id": query_id,
            "from": user.as_json(),
            "message": copy.deepcopy(stored.message),
            "chat_instance": str(abs(hash((bot.id, chat.id)))),
            "data": callback_data,
        }
        return bot.queue_update("callback_query", query)

    def queue_raw_update(self, token: str | int, update_type: str, payload: JSON) -> JSON:
        """Queue an update of ``update_type`` carrying ``payload`` exactly as given.

        Nothing is checked or filled in, so a test can send what a client
        library cannot parse (a field missing, a wrong type); returns the update.
        """
        return self.bot(token).queue_update(update_type, copy.deepcopy(payload))

    # -- reading what bots did ---------------------------------------------

    def sent_messages(self, token: str | int, chat_id: int | None = None) -> list[JSON]:
        """The bot's messages in sending order, as they read now, each with ``edit_history``."""
        return [
            stored.view()
            for stored in self.bot(token).sent
            if chat_id is None or stored.message["chat"]["id"] == chat_id
        ]

    @overload
    async def wait_for_reply(
        self,
        token: str | int,
        chat_id: int,
        *,
        count: Literal[1] = 1,
        timeout: float = 10.0,
        after_message_id: int | None = None,
        text: str | None = None,
    ) -> JSON: ...

    @overload
    async def wait_for_reply(
        self,
        token: str | int,
        chat_id: int,
        *,
        count: int,
        timeout: float = 10.0,
        after_message_id: int | None = None,
        text: str | None = None,
    ) -> JSON | list[JSON]: ...

    async def wait_for_reply(
        self,
        token: str | int,
        chat_id: int,
        *,
        count: int = 1,
        timeout: float = 10.0,
        after_message_id: int | None = None,
        text: str | None = None,
    ) -> JSON | list[JSON]:
        """Wait for the bot's next message(s) in a chat: one dict, or a list when ``count`` > 1.

        Counts bot messages newer than ``after_message_id``, by default newer
        than the user's latest message or button press in that chat, so a
        reply that came before this call still counts. With ``text``, only
        messages with exactly that text count. ``TimeoutError`` describes what
        the chat holds and whether the bot fetched its updates.
        """
        if count < 1:
            raise ControlError("count must be at least 1")
        bot = self.bot(token)
        if after_message_id is None:
            chat = bot.chats.get(chat_id)
            after_message_id = chat.last_user_action if chat is not None else 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            chat = bot.chats.get(chat_id)
            found = [
                stored.view()
                for number, stored in (chat.messages.items() if chat is not None else ())
                if number > after_message_id
                and stored.from_bot
                and (text is None or stored.message["text"] == text)
            ]
            if len(found) >= count:
                return found[0] if count == 1 else found[:count]
            if self.stopping:
                raise EmulatorStoppedError("the emulator stopped while waiting for a reply")
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(
                    self._describe_wait(bot, chat, count, timeout, after_message_id, text)
                )
            await bot.changed.wait(remaining)

    @staticmethod
    def _describe_wait(
        bot: EmulatedBot,
        chat: Chat | None,
        count: int,
        timeout: float,
        after: int,
        text: str | None,
    ) -> str:
        wanted = f"{count} message(s)" + (f" with text {text!r}" if text is not None else "")
        chat_id = chat.id if chat is not None else "?"
        lines = [
            f"{bot.label} did not send {wanted} in chat {chat_id} "
            f"after message {after} within {timeout} s."
        ]
        if chat is None:
            lines.append("No user has written in that chat.")
        else:
            lines.append("The chat holds:")
            lines.extend(
                f"  #{number} {'bot' if stored.from_bot else 'user'}: "
                f"{stored.message.get('text')!r}"
                + (f" (edited {len(stored.edit_history)}x)" if stored.edit_history else "")
                for number, stored in list(chat.messages.items())[-20:]
            )
        mode = f"webhook {bot.webhook.url}" if bot.webhook.url else "polling"
        lines.append(
            f"The bot has {len(bot.pending)} unconfirmed update(s), made "
            f"{bot.calls['getUpdates']} getUpdates and {bot.calls['sendMessage']} sendMessage "
            f"call(s); mode: {mode}" + ("; the token is revoked" if bot.revoked else "") + "."
        )
        if bot.webhook.last_error_message:
            lines.append(f"Last webhook error: {bot.webhook.last_error_message}")
        return "\n".join(lines)

    def pending_updates(self, token: str | int) -> list[JSON]:
        """Updates not yet confirmed (polling) or not yet accepted with 2xx (webhook)."""
        return copy.deepcopy(self.bot(token).pending)

    def confirmed_offset(self, token: str | int) -> int:
        """The highest ``offset`` the bot confirmed with ``getUpdates`` (0 before any)."""
        return self.bot(token).confirmed_offset

    def conflicts(self, token: str | int) -> int:
        """409 answers the bot's pollers received (a second poller, or a webhook set)."""
        return self.bot(token).conflicts

    def count_conflict(self, token: str) -> None:
        bot = self._bots.get(token)
        if bot is not None:
            bot.conflicts += 1

    def calls(self, token: str | int, method: str) -> int:
        """How often the bot called a Bot API method (any spelling's case)."""
        return self.bot(token).calls[canonical_name(method) or method]

    def webhook_info(self, token: str | int) -> JSON:
        """The bot's ``WebhookInfo``, as ``getWebhookInfo`` answers it."""
        return self.bot(token).webhook_info()

    def delivery_attempts(self, token: str | int) -> list[DeliveryAttempt]:
        """Every webhook POST made for the bot, oldest first."""
        return list(self.bot(token).deliveries)

    def callback_answer(self, token: str | int, callback_query_id: str) -> JSON | None:
        """The bot's ``answerCallbackQuery`` for a press (``None`` while unanswered)."""
        return copy.deepcopy(self.bot(token).callback_answers.get(callback_query_id))

    def subscribe(self, maxsize: int = 1000) -> Subscription:
        """A stream of :class:`EmulatorEvent` from now on, for live UIs; close it when done."""
        return self.events.subscribe(maxsize)

    # -- faults and flood limits -------------------------------------------

    def add_fault(
        self,
        kind: str,
        *,
        methods: str | list[str] | tuple[str, ...] | None = None,
        bot: str | int | None = None,
        chat_id: int | None = None,
        every: int | None = None,
        probability: float | None = None,
        seed: int | None = None,
        retry_after: int = 1,
        status: int = 502,
        hang: float = 65.0,
        times: int | None = None,
    ) -> Fault:
        """Fail chosen Bot API calls made over HTTP; the struck calls are not processed.

        ``kind``: ``"429"`` (with ``retry_after`` seconds), ``"5xx"`` (HTTP
        ``status``, 502 unless given), ``"drop"`` (the connection is closed with
        no answer) or ``"timeout"`` (no answer for ``hang`` seconds, then
        closed). The rule matches calls of ``methods`` (any spelling; all when
        ``None``), of one ``bot`` and to one ``chat_id`` when given; it strikes
        every ``every``-th match, or each with ``probability`` drawn from
        ``random.Random(seed)``, or every match; at most ``times`` in all.
        Rules are checked in the order added; the first that strikes wins.
        """
        names: frozenset[str] | None = None
        if methods is not None:
            wanted = [methods] if isinstance(methods, str) else list(methods)
            unknown = [name for name in wanted if canonical_name(name) is None]
            if unknown or not wanted:
                raise ControlError(
                    f"methods must name Bot API methods the emulator has, not {unknown or wanted}"
                    f" (it has {', '.join(METHODS)})"
                )
            names = frozenset(name for name in map(canonical_name, wanted) if name)
        fault = Fault(
            self._fault_ids + 1,
            kind,  # type: ignore[arg-type]  # Fault checks it
            methods=names,
            bot_id=self.bot(bot).id if bot is not None else None,
            chat_id=chat_id,
            every=every,
            probability=probability,
            seed=seed,
            retry_after=retry_after,
            status=status,
            hang=hang,
            times=times,
        )
        self._fault_ids = fault.id
        self._faults.append(fault)
        logger.info("fault %s added: %s", fault.id, fault.as_json())
        return fault

    @property
    def faults(self) -> list[Fault]:
        """The fault rules in force, oldest first."""
        return list(self._faults)

    def remove_fault(self, fault: Fault | int) -> None:
        """Stop injecting a fault (the rule or its id)."""
        fault_id = fault if isinstance(fault, int) else fault.id
        kept = [rule for rule in self._faults if rule.id != fault_id]
        if len(kept) == len(self._faults):
            raise ControlError(f"no fault with id {fault_id}")
        self._faults = kept

    def clear_faults(self) -> None:
        """Stop injecting every fault."""
        self._faults = []

    def enforce_flood_limits(self, limits: FloodLimits | None = None) -> FloodLimits:
        """Answer 429 to sends beyond ``limits`` (Telegram's by default) from now on."""
        limits = limits or FloodLimits()
        self._flood_gate = FloodGate(limits)
        return limits

    def lift_flood_limits(self) -> None:
        """Stop enforcing flood limits."""
        self._flood_gate = None

    @property
    def flood_limits(self) -> FloodLimits | None:
        """The flood limits enforced, or ``None``."""
        return self._flood_gate.limits if self._flood_gate is not None else None

    def fault_counts(self, token: str | int) -> JSON:
        """What the bot's calls met: ``{"injected": {method: {kind: n}}, "refused": {method:
        {scope: n}}}``, where ``refused`` counts 429s for exceeding the flood limits."""
        return counts_report(self.bot(token))

    # -- the Bot API -------------------------------------------------------

    async def execute(
        self,
        token: str,
        method: str,
        params: Params | Mapping[str, Any],
        *,
        faults: bool = False,
    ) -> Any:
        """Run one Bot API call as the server does; raises :class:`BotAPIError` like Telegram.

        With ``faults`` (calls over HTTP), fault rules and flood limits apply
        first; a dropped connection is raised as
        :class:`~botyard.emulator.faults.DropConnection`.
        """
        bot = self._bots.get(token)
        if bot is None or bot.revoked:
            raise BotAPIError.unauthorized()
        name = canonical_name(method)
        bot.calls[name or method] += 1
        if name is None:
            raise BotAPIError.method_not_found()
        call_params = params if isinstance(params, Params) else Params(params)
        if faults:
            for fault in self._faults:
                if fault.strikes(bot, name, call_params):
                    bot.injected[(name, fault.kind)] += 1
                    fault.fail()
            if self._flood_gate is not None and name in FLOOD_LIMITED_METHODS:
                now = asyncio.get_running_loop().time()
                self._flood_gate.admit(bot, name, call_params, now)
        return await METHODS[name](self, bot, call_params)

    async def _run_webhook_reply(self, bot: EmulatedBot, method: str, params: Params) -> None:
        try:
            await self.execute(bot.token, method, params)
        except BotAPIError as exc:
            # Telegram ignores the outcome of a method sent in a webhook answer.
            logger.warning(
                "%s: %s from a webhook answer failed: %s", bot.label, method, exc.description
            )
