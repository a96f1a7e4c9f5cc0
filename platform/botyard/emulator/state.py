"""What the emulator remembers about each bot, its chats, updates and webhook.

Plain data plus the few operations that must keep it consistent (queueing and
confirming updates, numbering messages). The Bot API methods, the control API
and webhook delivery all change state through these, and every change wakes
the bot's waiters and is published to subscribers through :meth:`EmulatedBot.emit`.
"""

from __future__ import annotations

import copy
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from botyard.emulator.events import EmulatorEvent, EventHub, EventKind, Signal

JSON = dict[str, Any]

EXCLUDED_BY_DEFAULT = frozenset({"chat_member", "message_reaction", "message_reaction_count"})
"""Update types Telegram sends only when asked for in ``allowed_updates``."""


@dataclass
class SimulatedUser:
    """A Telegram user the tests impersonate; users are shared by all bots, as in Telegram."""

    id: int
    first_name: str
    username: str | None = None
    last_name: str | None = None
    language_code: str | None = "en"

    def as_json(self) -> JSON:
        """The Bot API ``User`` object."""
        user: JSON = {"id": self.id, "is_bot": False, "first_name": self.first_name}
        for key in ("last_name", "username", "language_code"):
            if (value := getattr(self, key)) is not None:
                user[key] = value
        return user


@dataclass
class StoredMessage:
    """One message of a chat: the Bot API object as it reads now, plus its past versions.

    ``reply_markup`` keeps any kind of keyboard the bot sent, while ``message``
    carries only inline keyboards, as the Bot API's ``Message`` does.
    """

    message: JSON
    from_bot: bool
    reply_markup: JSON | None = None
    edit_history: list[JSON] = field(default_factory=list)

    def view(self) -> JSON:
        """A copy for tests: the message with ``reply_markup`` (any kind) and ``edit_history``."""
        view = copy.deepcopy(self.message)
        view.pop("reply_markup", None)
        if self.reply_markup is not None:
            view["reply_markup"] = copy.deepcopy(self.reply_markup)
        view["edit_history"] = copy.deepcopy(self.edit_history)
        return view


@dataclass
class Chat:
    """A chat as one bot sees it; message ids are numbered per chat, shared by both sides."""

    info: JSON
    messages: dict[int, StoredMessage] = field(default_factory=dict)
    last_message_id: int = 0
    last_user_action: int = 0
    """Newest message id when the user last acted; ``wait_for_reply`` waits past it."""

    @property
    def id(self) -> int:
        """The chat id."""
        return int(self.info["id"])

    def add(self, message: JSON, *, from_bot: bool, reply_markup: JSON | None) -> StoredMessage:
        """Store a message, giving it the chat's next message id and the current date."""
        self.last_message_id += 1
        message = {"message_id": self.last_message_id, "date": int(time.time()), **message}
        stored = StoredMessage(message, from_bot=from_bot, reply_markup=reply_markup)
        self.messages[self.last_message_id] = stored
        return stored


@dataclass
class Webhook:
    """A bot's webhook settings; an empty ``url`` means the bot polls."""

    url: str = ""
    secret_token: str | None = field(default=None, repr=False)
    max_connections: int = 40
    last_error_date: int | None = None
    last_error_message: str | None = None


@dataclass(frozen=True)
class DeliveryAttempt:
    """One POST of an update to a webhook: the HTTP status, or the error when there was none."""

    update_id: int
    url: str
    status: int | None
    error: str | None
    at: float


@dataclass(eq=False, repr=False)
class EmulatedBot:
    """One bot known to the emulator; tests read ``token``, ``id``, ``username``, ``revoked``.

    The other fields are the emulator's state; read them through the
    emulator's methods, which return copies.
    """

    token: str
    id: int
    username: str
    first_name: str
    hub: EventHub
    revoked: bool = False
    pending: list[JSON] = field(default_factory=list)
    next_update_id: int = 1
    confirmed_offset: int = 0
    allowed_updates: list[str] | None = None
    webhook: Webhook = field(default_factory=Webhook)
    chats: dict[int, Chat] = field(default_factory=dict)
    sent: list[StoredMessage] = field(default_factory=list)
    calls: Counter[str] = field(default_factory=Counter)
    injected: Counter[tuple[str, str]] = field(default_factory=Counter)
    """Calls struck by a fault, by (method, fault kind)."""
    refused: Counter[tuple[str, str]] = field(default_factory=Counter)
    """Sends refused by the flood limits, by (method, scope: bot, chat or group)."""
    open_callback_queries: set[str] = field(default_factory=set)
    callback_answers: dict[str, JSON] = field(default_factory=dict)
    deliveries: list[DeliveryAttempt] = field(default_factory=list)
    changed: Signal = field(default_factory=Signal)
    poll: object | None = None
    #: 409 answers to ``getUpdates`` that reached a connected client (two pollers).
    conflicts: int = 0
    """Marks the running ``getUpdates``; a newer call replaces it and ends the older one."""

    def __repr__(self) -> str:
        return f"EmulatedBot(@{self.username}, id={self.id}, revoked={self.revoked})"

    @property
    def label(self) -> str:
        """How logs and messages name the bot: never by token."""
        return f"@{self.username} ({self.id})"

    def as_user(self) -> JSON:
        """The bot's ``User`` object, as ``getMe`` and ``from`` fields show it."""
        return {
            "id": self.id,
            "is_bot": True,
            "first_name": self.first_name,
            "username": self.username,
        }

    def emit(self, kind: EventKind, payload: JSON) -> None:
        """Wake the bot's waiters and tell subscribers what happened."""
        self.changed.notify()
        if self.hub.active:
            event = EmulatorEvent(kind, self.id, self.username, copy.deepcopy(payload))
            self.hub.publish(event)

    def wants(self, update_type: str) -> bool:
        """Whether ``allowed_updates`` lets this type of update be queued."""
        if self.allowed_updates is None:
            return update_type not in EXCLUDED_BY_DEFAULT
        return update_type in self.allowed_updates

    def queue_update(self, update_type: str, payload: JSON) -> JSON:
        """Create the next update; queue it unless ``allowed_updates`` filters it out.

        Like Telegram, the filter applies when an update is created, and a
        filtered update still uses up its id.
        """
        update: JSON = {"update_id": self.next_update_id, update_type: payload}
        self.next_update_id += 1
        if self.wants(update_type):
            self.pending.append(update)
            self.emit("update_queued", update)
        return copy.deepcopy(update)

    def confirm(self, offset: int) -> None:
        """Apply ``getUpdates``' offset: drop confirmed updates forever.

        A positive offset confirms every update below it; a negative one keeps
        only the last ``-offset`` updates, as Telegram documents.
        """
        if offset > 0:
            self.pending = [u for u in self.pending if u["update_id"] >= offset]
            self.confirmed_offset = max(self.confirmed_offset, offset)
        elif offset < 0:
            self.pending = self.pending[offset:]
            first = self.pending[0]["update_id"] if self.pending else self.next_update_id
            self.confirmed_offset = max(self.confirmed_offset, first)
        else:
            return
        self.changed.notify()

    def remove_update(self, update_id: int) -> None:
        """Forget one update after its webhook delivery succeeded."""
        self.pending = [u for u in self.pending if u["update_id"] != update_id]
        self.changed.notify()

    def drop_pending(self) -> None:
        """``drop_pending_updates``: forget every update not delivered yet."""
        self.pending = []
        self.changed.notify()

    def webhook_info(self) -> JSON:
        """The ``WebhookInfo`` object."""
        info: JSON = {
            "url": self.webhook.url,
            "has_custom_certificate": False,
            "pending_update_count": len(self.pending),
        }
        if self.webhook.url:
            info["max_connections"] = self.webhook.max_connections
            if self.allowed_updates is not None:
                info["allowed_updates"] = list(self.allowed_updates)
        if self.webhook.last_error_date is not None:
            info["last_error_date"] = self.webhook.last_error_date
            info["last_error_message"] = self.webhook.last_error_message
        return info
