"""The Bot API methods the emulator answers, with Telegram's results and errors.

Each method takes the emulator, the calling bot and the call's parameters and
returns the ``result`` Telegram would; failures raise :class:`BotAPIError` with
Telegram's status and description, so aiogram raises the same exception types
it raises against the real service.
"""

from __future__ import annotations

import asyncio
import copy
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from botyard.emulator.errors import BotAPIError
from botyard.emulator.params import Params
from botyard.emulator.state import JSON, Chat, EmulatedBot, StoredMessage, Webhook
from botyard.emulator.text import utf16_length, visible_text

if TYPE_CHECKING:
    from botyard.emulator.emulator import BotAPIEmulator

Method = Callable[["BotAPIEmulator", EmulatedBot, Params], Awaitable[Any]]

MAX_TEXT_LENGTH = 4096
MAX_CALLBACK_DATA_BYTES = 64
_SECRET_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")
_BUTTON_ACTIONS = frozenset(
    {
        "callback_data",
        "url",
        "web_app",
        "login_url",
        "switch_inline_query",
        "switch_inline_query_current_chat",
        "switch_inline_query_chosen_chat",
        "copy_text",
        "callback_game",
        "pay",
    }
)
_MARKUP_KINDS = ("inline_keyboard", "keyboard", "remove_keyboard", "force_reply")
NOT_MODIFIED = (
    "message is not modified: specified new message content and reply markup are exactly "
    "the same as a current content and reply markup of the message"
)
POLLING_CONFLICT = (
    "terminated by other getUpdates request; make sure that only one bot instance is running"
)
WEBHOOK_CONFLICT = (
    "can't use getUpdates method while webhook is active; use deleteWebhook to delete the "
    "webhook first"
)


def _chat(bot: EmulatedBot, params: Params) -> Chat:
    chat = bot.chats.get(params.chat_id())
    if chat is None:
        raise BotAPIError.bad_request("chat not found")
    return chat


def _text(params: Params) -> str:
    raw = params.text("text")
    if raw is None or not raw.strip():
        raise BotAPIError.bad_request("message text is empty")
    text = visible_text(raw, params.text("parse_mode"))
    if utf16_length(text) > MAX_TEXT_LENGTH:
        raise BotAPIError.bad_request("message is too long")
    return text


def _check_inline_keyboard(rows: Any) -> None:
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
        raise BotAPIError.bad_request("can't parse inline keyboard markup JSON object")
    for button in (button for row in rows for button in row):
        if not isinstance(button, dict) or not isinstance(button.get("text"), str):
            raise BotAPIError.bad_request("can't parse inline keyboard button: Text is empty")
        if not _BUTTON_ACTIONS & button.keys():
            raise BotAPIError.bad_request(
                "can't parse inline keyboard button: "
                "Text buttons are unallowed in the inline keyboard"
            )
        data = button.get("callback_data")
        if data is not None and not 1 <= len(str(data).encode()) <= MAX_CALLBACK_DATA_BYTES:
            raise BotAPIError.bad_request("BUTTON_DATA_INVALID")


def _reply_markup(params: Params) -> JSON | None:
    markup = params.json("reply_markup")
    if markup is None:
        return None
    if not isinstance(markup, dict) or not any(kind in markup for kind in _MARKUP_KINDS):
        raise BotAPIError.bad_request("can't parse reply keyboard markup JSON object")
    if "inline_keyboard" in markup:
        _check_inline_keyboard(markup["inline_keyboard"])
    return markup


def _update_types(params: Params) -> list[str] | None:
    """``allowed_updates``: a list of type names; an empty list means Telegram's default."""
    value = params.json("allowed_updates")
    if not isinstance(value, list) or not all(isinstance(kind, str) for kind in value):
        raise BotAPIError.bad_request("can't parse allowed updates JSON object")
    return list(value) or None


def _reply_to(chat: Chat, params: Params) -> JSON | None:
    reply = params.json("reply_parameters")
    message_id = reply.get("message_id") if isinstance(reply, dict) else None
    message_id = message_id or params.integer("reply_to_message_id")
    if message_id is None:
        return None
    target = chat.messages.get(int(message_id))
    if target is not None:
        quoted = copy.deepcopy(target.message)
        quoted.pop("reply_to_message", None)
        return quoted
    allowed = isinstance(reply, dict) and reply.get("allow_sending_without_reply") is True
    if allowed or params.boolean("allow_sending_without_reply"):
        return None
    raise BotAPIError.bad_request("message to be replied not found")


async def get_me(emulator: BotAPIEmulator, bot: EmulatedBot, params: Params) -> JSON:
    """The bot's own ``User``, with the capability flags Telegram adds for bots."""
    return {
        **bot.as_user(),
        "can_join_groups": True,
        "can_read_all_group_messages": False,
        "supports_inline_queries": False,
        "can_connect_to_business": False,
        "has_main_web_app": False,
    }


async def get_updates(emulator: BotAPIEmulator, bot: EmulatedBot, params: Params) -> list[JSON]:
    """Long polling: confirm by ``offset``, then answer as soon as an update is pending.

    A newer ``getUpdates`` ends the running one with 409, as Telegram does; the
    newer call carries on, so a poller that restarts after losing its
    connection is never locked out by its own abandoned request.
    """
    if bot.webhook.url:
        raise BotAPIError.conflict(WEBHOOK_CONFLICT)
    bot.confirm(params.integer("offset") or 0)
    limit = min(max(params.integer("limit") or 100, 1), 100)
    if "allowed_updates" in params:
        bot.allowed_updates = _update_types(params)
    marker = object()
    bot.poll = marker
    bot.changed.notify()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(params.integer("timeout") or 0, 0)
    try:
        while True:
            if bot.poll is not marker:
                raise BotAPIError.conflict(POLLING_CONFLICT)
            if bot.revoked:
                raise BotAPIError.unauthorized()
            if bot.webhook.url:
                raise BotAPIError.conflict(WEBHOOK_CONFLICT)
            remaining = deadline - loop.time()
            if bot.pending or remaining <= 0 or emulator.stopping:
                updates = copy.deepcopy(bot.pending[:limit])
                for update in updates:
                    bot.emit("update_delivered", {"via": "getUpdates", "update": update})
                return updates
            await bot.changed.wait(remaining)
    finally:
        if bot.poll is marker:
            bot.poll = None


async def send_message(emulator: BotAPIEmulator, bot: EmulatedBot, params: Params) -> JSON:
    """Store the bot's message in a chat it has seen and return the ``Message``."""
    chat = _chat(bot, params)
    message: JSON = {"chat": copy.deepcopy(chat.info), "from": bot.as_user()}
    message["text"] = _text(params)
    markup = _reply_markup(params)
    if isinstance(entities := params.json("entities"), list):
        message["entities"] = entities
    if (quoted := _reply_to(chat, params)) is not None:
        message["reply_to_message"] = quoted
    if markup is not None and "inline_keyboard" in markup:
        message["reply_markup"] = markup
    stored = chat.add(message, from_bot=True, reply_markup=markup)
    bot.sent.append(stored)
    bot.emit("message_sent", stored.view())
    return copy.deepcopy(stored.message)


def _editable(bot: EmulatedBot, params: Params) -> StoredMessage:
    if "inline_message_id" in params:
        raise BotAPIError.bad_request("inline messages are not emulated")
    chat = _chat(bot, params)
    message_id = params.integer("message_id")
    if message_id is None:
        raise BotAPIError.bad_request("message identifier is not specified")
    stored = chat.messages.get(message_id)
    if stored is None:
        raise BotAPIError.bad_request("message to edit not found")
    if not stored.from_bot:
        raise BotAPIError.bad_request("message can't be edited")
    return stored


async def edit_message_text(emulator: BotAPIEmulator, bot: EmulatedBot, params: Params) -> JSON:
    """Replace a message's text; no ``reply_markup`` drops the inline keyboard, as in Telegram."""
    stored = _editable(bot, params)
    text = _text(params)
    markup = _reply_markup(params)
    if markup is not None and "inline_keyboard" not in markup:
        raise BotAPIError.bad_request("can't parse inline keyboard markup JSON object")
    message = stored.message
    if text == message["text"] and markup == message.get("reply_markup"):
        raise BotAPIError.bad_request(NOT_MODIFIED)
    stored.edit_history.append(
        {
            "text": message["text"],
            "reply_markup": copy.deepcopy(stored.reply_markup),
            "date": message.get("edit_date", message["date"]),
        }
    )
    message["text"] = text
    message["edit_date"] = int(time.time())
    message.pop("entities", None)
    if isinstance(entities := params.json("entities"), list):
        message["entities"] = entities
    message.pop("reply_markup", None)
    if markup is not None:
        message["reply_markup"] = markup
    stored.reply_markup = markup
    bot.emit("message_edited", stored.view())
    return copy.deepcopy(message)


async def answer_callback_query(emulator: BotAPIEmulator, bot: EmulatedBot, params: Params) -> bool:
    """Record the answer to a button press; each query can be answered once."""
    query_id = params.text("callback_query_id")
    if query_id not in bot.open_callback_queries:
        raise BotAPIError.bad_request(
            "query is too old and response timeout expired or query ID is invalid"
        )
    bot.open_callback_queries.discard(query_id)
    answer: JSON = {"show_alert": params.boolean("show_alert")}
    for key in ("text", "url"):
        if (value := params.text(key)) is not None:
            answer[key] = value
    bot.callback_answers[query_id] = answer
    bot.emit("callback_answered", {"callback_query_id": query_id, "answer": answer})
    return True


async def set_webhook(emulator: BotAPIEmulator, bot: EmulatedBot, params: Params) -> bool:
    """Switch the bot to webhook delivery (an empty ``url`` switches back to polling).

    Plain ``http`` and any port are accepted, unlike Telegram, so tests can
    serve the webhook on loopback. ``max_connections`` is clamped to 1-100.
    """
    url = params.text("url") or ""
    if url:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BotAPIError.bad_request("bad webhook: An HTTPS URL must be provided for webhook")
    secret = params.text("secret_token")
    if secret is not None and not _SECRET_TOKEN.fullmatch(secret):
        raise BotAPIError.bad_request("secret token contains unallowed characters")
    max_connections = min(max(params.integer("max_connections") or 40, 1), 100)
    if "allowed_updates" in params:
        bot.allowed_updates = _update_types(params)
    if params.boolean("drop_pending_updates"):
        bot.drop_pending()
    bot.webhook = Webhook(url=url, secret_token=secret, max_connections=max_connections)
    emulator.webhooks.restart(bot)
    return True


async def delete_webhook(emulator: BotAPIEmulator, bot: EmulatedBot, params: Params) -> bool:
    """Switch the bot back to polling, optionally dropping undelivered updates."""
    if params.boolean("drop_pending_updates"):
        bot.drop_pending()
    bot.webhook = Webhook()
    emulator.webhooks.restart(bot)
    return True


async def get_webhook_info(emulator: BotAPIEmulator, bot: EmulatedBot, params: Params) -> JSON:
    """The ``WebhookInfo``, also answered while polling (with an empty ``url``)."""
    return bot.webhook_info()


async def accept(emulator: BotAPIEmulator, bot: EmulatedBot, params: Params) -> bool:
    """Methods whose effect nothing here observes (``close``, ``logOut``, commands): ``True``."""
    return True


METHODS: dict[str, Method] = {
    "getMe": get_me,
    "getUpdates": get_updates,
    "sendMessage": send_message,
    "editMessageText": edit_message_text,
    "answerCallbackQuery": answer_callback_query,
    "setWebhook": set_webhook,
    "deleteWebhook": delete_webhook,
    "getWebhookInfo": get_webhook_info,
    "close": accept,
    "logOut": accept,
    "setMyCommands": accept,
    "deleteMyCommands": accept,
}

_BY_LOWER_NAME = {name.lower(): name for name in METHODS}


def canonical_name(method: str) -> str | None:
    """The method's Bot API spelling; Telegram matches method names case-insensitively."""
    return _BY_LOWER_NAME.get(method.lower())
