"""Which bot, update and chat a log line is about: :data:`botyard.logs.log_context` set
around each update a bot's Dispatcher handles (read by the JSON log format)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import BaseMiddleware
from aiogram.types import Chat, TelegramObject, Update

from botyard.logs import LogContext, log_context


class LogContextMiddleware(BaseMiddleware):
    """An outer update middleware: the update's bot, id and chat for every record logged
    while it is handled, by botyard, aiogram or the bot's own code."""

    def __init__(self, bot: str) -> None:
        self.bot = bot

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        chat = data.get("event_chat")
        token = log_context.set(
            LogContext(
                self.bot,
                event.update_id if isinstance(event, Update) else None,
                chat.id if isinstance(chat, Chat) else None,
            )
        )
        try:
            return await handler(event, data)
        finally:
            log_context.reset(token)
