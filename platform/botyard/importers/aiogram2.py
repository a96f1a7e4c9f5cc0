"""aiogram 2's contrib ``MongoStorage``: state and data in two collections.

``aiogram_state`` holds ``{chat, user, state}`` and ``aiogram_data`` holds
``{chat, user, data}``; a conversation may have either or both. aiogram 2 had
no bot id, thread or destiny in its keys.

Two passes: the state documents, each joined with its data document (one
query per batch), then the data documents that have no state document.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Any

from aiogram.fsm.storage.base import StorageKey
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from botyard.database.documents import Document
from botyard.importers.source import (
    Batch,
    ParseError,
    SourceError,
    count_documents,
    parse_id,
    read_batches,
    state_and_data,
)

STATE_COLLECTION = "aiogram_state"
DATA_COLLECTION = "aiogram_data"
Address = tuple[int, int]


def _address(document: Document) -> Address:
    return parse_id(document.get("chat"), "chat"), parse_id(document.get("user"), "user")


def _label(collection: str, document: Document) -> str:
    return f"{collection}/{document['_id']}"


class Aiogram2Source:
    """The ``aiogram_state`` and ``aiogram_data`` collections of one database."""

    def __init__(self, database: AsyncDatabase[Document], label: str) -> None:
        self.states: AsyncCollection[Document] = database[STATE_COLLECTION]
        self.data: AsyncCollection[Document] = database[DATA_COLLECTION]
        self.label = label

    def describe(self) -> str:
        return f"aiogram 2 storage {self.label} ({STATE_COLLECTION} and {DATA_COLLECTION})"

    async def count(self) -> int:
        return await count_documents(self.states) + await count_documents(self.data)

    async def batches(self, batch_size: int) -> AsyncIterator[Batch]:
        async for states in read_batches(self.states, batch_size):
            partners = await self._partners(self.data, states)
            batch = Batch(documents=len(states))
            for document in states:
                batch.add(
                    _label(STATE_COLLECTION, document),
                    functools.partial(self._join, document, partners),
                )
            yield batch
        async for data in read_batches(self.data, batch_size):
            paired = await self._partners(self.states, data)
            batch = Batch(documents=len(data))
            for document in data:
                try:
                    if _address(document) in paired:
                        continue  # imported with its state document
                except ParseError:
                    pass  # reported below
                batch.add(_label(DATA_COLLECTION, document), functools.partial(_parse, document))
            yield batch

    @staticmethod
    def _join(
        state_document: Document, partners: dict[Address, Document]
    ) -> tuple[StorageKey, str | None, dict[str, Any]]:
        key, state, _ = _parse(state_document)
        data_document = partners.get((key.chat_id, key.user_id))
        if data_document is None:
            return key, state, {}
        try:
            _, data = state_and_data({"data": data_document.get("data")})
        except ParseError as error:
            raise ParseError(f"{_label(DATA_COLLECTION, data_document)}: {error}") from None
        return key, state, data

    @staticmethod
    async def _partners(
        collection: AsyncCollection[Document], documents: list[Document]
    ) -> dict[Address, Document]:
        """The documents of ``collection`` with the same chat and user as ``documents``."""
        chats = list({document.get("chat") for document in documents})
        users = list({document.get("user") for document in documents})
        found: dict[Address, Document] = {}
        try:
            cursor = collection.find({"chat": {"$in": chats}, "user": {"$in": users}})
            async for partner in cursor:
                try:
                    found[_address(partner)] = partner
                except ParseError:
                    continue  # reported when its own collection is read
        except PyMongoError as error:
            raise SourceError(f"reading {collection.full_name}: {error}") from error
        return found


def _parse(document: Document) -> tuple[StorageKey, str | None, dict[str, Any]]:
    chat_id, user_id = _address(document)
    state, data = state_and_data(document)
    return StorageKey(bot_id=0, chat_id=chat_id, user_id=user_id), state, data
