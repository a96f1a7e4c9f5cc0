"""What the page shows, as JSON: a bot's status line, a chat's messages, a user's FSM record.

Pure functions of the emulator's, the runner's and the database's state, so the
JSON API and the live stream show exactly the same thing. No token ever enters
these views: bots are named by registry name, id and username.
"""

from __future__ import annotations

import re
from typing import Any

from aiogram.fsm.storage.base import StorageKey
from aiogram.fsm.strategy import apply_strategy
from pymongo.asynchronous.database import AsyncDatabase

from botyard.emulator import EmulatedBot
from botyard.emulator.text import utf16_length
from botyard.errors import BotyardError
from botyard.registry.models import BotConfig
from botyard.runtime.runner import BotRunner
from botyard.storage.records import FSMRecords
from botyard.tokens import redact

JSON = dict[str, Any]

#: Telegram's limit on a message's text, in UTF-16 code units.
MAX_MESSAGE_LENGTH = 4096
#: Longest a chat read may wait for a bot's reply, in seconds.
MAX_WAIT = 60.0


class PageError(BotyardError):
    """Bad input from the page or an API client: answered as ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def bot_status(
    config: BotConfig,
    runner: BotRunner | None,
    emulated: EmulatedBot | None,
    records: int | None,
    cannot_start: str | None = None,
) -> JSON:
    """One line of the bot list: status, counters and how many FSM records it keeps."""
    if not config.enabled:
        status, detail = "disabled", "enabled: false in the registry"
    elif runner is None:
        status = "not_running"
        detail = f"could not start: {cannot_start or 'see the sandbox log'}"
    else:
        status, detail = runner.status.value, redact(runner.status_detail)
    counters = runner.counters if runner is not None else None
    return {
        "name": config.name,
        "enabled": config.enabled,
        "status": status,
        "detail": detail,
        "username": emulated.username if emulated is not None else None,
        "bot_id": emulated.id if emulated is not None else None,
        "revoked": emulated.revoked if emulated is not None else False,
        "received": counters.received if counters else 0,
        "handled": counters.handled if counters else 0,
        "errors": counters.errors if counters else 0,
        "fsm_records": records,
    }


def chat_messages(emulated: EmulatedBot | None, user_id: int) -> list[JSON]:
    """The private chat of ``user_id`` with the bot, oldest first, edits applied in place."""
    chat = emulated.chats.get(user_id) if emulated is not None else None
    if chat is None:
        return []
    return [
        message_view(stored.view(), from_bot=stored.from_bot) for stored in chat.messages.values()
    ]


def message_view(message: JSON, *, from_bot: bool) -> JSON:
    """A Bot API message as the page draws it: text, buttons, and whether it was edited."""
    markup = message.get("reply_markup") or {}
    history = message.get("edit_history") or []
    return {
        "message_id": message["message_id"],
        "from": "bot" if from_bot else "user",
        "text": message.get("text", ""),
        "date": message.get("date"),
        "edited": bool(history),
        "previous_texts": [version.get("text", "") for version in history],
        "buttons": [
            [_inline_button(button) for button in row] for row in markup.get("inline_keyboard", [])
        ],
        "keyboard": [
            [button if isinstance(button, str) else button.get("text", "") for button in row]
            for row in markup.get("keyboard", [])
        ],
    }


def _inline_button(button: JSON) -> JSON:
    shown = {"text": button.get("text", "")}
    for key in ("callback_data", "url"):
        if key in button:
            shown[key] = button[key]
    return shown


def storage_key(config: BotConfig, bot_id: int, user_id: int) -> StorageKey:
    """The FSM key of a user's private chat with the bot, under the bot's ``fsm_strategy``."""
    chat_id, user, thread_id = apply_strategy(config.fsm_strategy.to_aiogram(), user_id, user_id)
    return StorageKey(bot_id=bot_id, chat_id=chat_id, user_id=user, thread_id=thread_id)


async def fsm_record(database: AsyncDatabase[JSON], config: BotConfig, key: StorageKey) -> JSON:
    """The user's FSM state and data as stored, read without refreshing its expiry."""
    document = await FSMRecords(database).find(config.namespace, key) or {}
    return {
        "state": document.get("state"),
        "data": document.get("data") or {},
        "updated_at": _iso(document.get("updated_at")),
        "expires_at": _iso(document.get("expires_at")),
        "stored": bool(document),
    }


async def record_counts(database: AsyncDatabase[JSON], namespaces: list[str]) -> dict[str, int]:
    """How many FSM records each namespace holds: one query for all bots, counted from the
    state index without reading a record."""
    counts: dict[str, int] = {}
    for (namespace, _), count in (await FSMRecords(database).count_per_state(namespaces)).items():
        counts[namespace] = counts.get(namespace, 0) + count
    return counts


#: Collections of botyard's own, never shown as a bot's documents.
PLATFORM_COLLECTIONS = re.compile(r"fsm_records|webhook_.*|sandbox_.*|migrations_.*|system\..*")
#: Most documents shown per chat, newest first.
MAX_DOCUMENTS = 5


def bot_collections(names: list[str]) -> list[str]:
    """The collections bots made themselves (``questionnaire_answers``), in name order."""
    return sorted(name for name in names if not PLATFORM_COLLECTIONS.fullmatch(name))


async def saved_documents(
    database: AsyncDatabase[JSON], collections: list[str], bot_id: int, user_id: int
) -> list[JSON]:
    """What the bot saved for the user: the newest documents of the bots' own collections
    with ``bot_id`` and ``user_id`` fields, as the example questionnaire writes them.

    Each collection is queried apart, newest first; the page shows dates and ids as text.
    """
    found: list[JSON] = []
    for name in collections:
        cursor = database[name].find(
            {"bot_id": bot_id, "user_id": user_id}, sort=[("_id", -1)], limit=MAX_DOCUMENTS
        )
        found.extend([{"collection": name, "document": document} async for document in cursor])
    return found[:MAX_DOCUMENTS]


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def check_text(text: object) -> str:
    """The text of a user's message, if Telegram could carry it; :class:`PageError` says why not."""
    if not isinstance(text, str):
        raise PageError(400, "'text' is required: the message to send, as a string")
    if not text.strip():
        raise PageError(400, "Telegram cannot send an empty message: type some text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise PageError(
            400, "the text is not valid Unicode (it holds a lone surrogate), Telegram rejects it"
        ) from None
    length = utf16_length(text)
    if length > MAX_MESSAGE_LENGTH:
        raise PageError(
            400,
            f"a Telegram message holds at most {MAX_MESSAGE_LENGTH} characters; "
            f"this one has {length}",
        )
    return text
