"""Greeter bot: per-bot aiogram defaults and middlewares, set in the registry.

Its registry entry gives it ``bot_properties: {parse_mode: HTML}``, so the
``<b>`` below is bold for the user without any ``parse_mode=`` in the code, and
the :mod:`.middlewares` ``language`` middleware, which hands every message
handler the user's language.
"""

from aiogram import Router
from aiogram.types import Message

GREETINGS = {"de": "Hallo", "fr": "Bonjour"}


def router() -> Router:  # a factory: every bot listing it gets a fresh Router
    greeter = Router()

    @greeter.message()
    async def greet(message: Message, language: str) -> None:
        greeting = GREETINGS.get(language, "Hello")
        await message.answer(f"<b>{greeting}</b>, you write in {language}.")

    return greeter
