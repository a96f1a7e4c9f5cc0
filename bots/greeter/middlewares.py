"""Middlewares for the greeter bot, named in the registry as ``bots.greeter.middlewares:...``."""

from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import BaseMiddleware
from aiogram.types import TelegramObject


class LanguageMiddleware(BaseMiddleware):
    """Hands handlers ``language``: the user's Telegram language, or the bot's default.

    A class: the registry's ``bots.greeter.middlewares:LanguageMiddleware`` makes
    one instance per bot. The default comes from ``settings.language`` of the bot.
    """

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        user = data.get("event_from_user")  # set by aiogram for every update with a user
        default = data["bot_config"].settings.get("language", "en")
        data["language"] = (user.language_code if user else None) or default
        return await handler(event, data)
