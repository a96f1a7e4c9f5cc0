"""The questionnaire's ``on_state_expired`` hook: tells a user who stopped half-way.

Registered in the registry with ``on_state_expired: bots.questionnaire.expiry:on_state_expired``;
the cleanup calls it for each conversation it removes, before removing it.
"""

from typing import Any

from aiogram import Bot
from aiogram.fsm.storage.base import StorageKey


async def on_state_expired(
    bot: Bot, key: StorageKey, state: str | None, data: dict[str, Any]
) -> None:
    if state is not None:
        await bot.send_message(key.chat_id, "Your questionnaire expired; /start begins again.")
