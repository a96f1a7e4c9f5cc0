"""Echo bot: repeats every text message. It never touches the FSM."""

from aiogram import F, Router
from aiogram.types import Message


def router() -> Router:
    """Build the echo bot's router (a factory, so several bots can share this module)."""
    echo = Router(name="echo")

    @echo.message(F.text)
    async def repeat(message: Message) -> None:
        await message.answer(message.text or "")

    return echo
