"""The "hand-written" contender's storage: the article's MongoDB storage, ported to PyMongo.

The approach botyard started from: a :class:`BaseStorage` subclass with one
``find_one`` or ``update_one`` per call, one document per conversation, and
aiogram's default ``update_data`` (``get_data`` + ``set_data``) for every data
change. The article used Motor, which is end-of-life; this port uses PyMongo's
``AsyncMongoClient``, call for call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiogram.fsm.state import State
from aiogram.fsm.storage.base import BaseStorage, DefaultKeyBuilder, StateType, StorageKey
from pymongo.asynchronous.collection import AsyncCollection


class HandWrittenStorage(BaseStorage):
    """One document ``{_id, state, data}`` per key; every call is one round trip."""

    def __init__(self, collection: AsyncCollection[dict[str, Any]]) -> None:
        self.collection = collection
        self.key_builder = DefaultKeyBuilder(with_bot_id=True)

    async def set_state(self, key: StorageKey, state: StateType = None) -> None:
        value = state.state if isinstance(state, State) else state
        await self.collection.update_one(
            {"_id": self.key_builder.build(key)}, {"$set": {"state": value}}, upsert=True
        )

    async def get_state(self, key: StorageKey) -> str | None:
        document = await self.collection.find_one({"_id": self.key_builder.build(key)})
        return None if document is None else document.get("state")

    async def set_data(self, key: StorageKey, data: Mapping[str, Any]) -> None:
        await self.collection.update_one(
            {"_id": self.key_builder.build(key)}, {"$set": {"data": dict(data)}}, upsert=True
        )

    async def get_data(self, key: StorageKey) -> dict[str, Any]:
        document = await self.collection.find_one({"_id": self.key_builder.build(key)})
        return dict(document.get("data") or {}) if document else {}

    async def close(self) -> None:
        """The client belongs to the application, which closes it."""
