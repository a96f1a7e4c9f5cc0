"""The hand-written motor storage this project started from.

One document per conversation: ``{user_id: "<str>", chat_id: "<str>", state, data}``
(ids as strings; ints are accepted too), with no bot id, thread or destiny.
"""

from __future__ import annotations

from aiogram.fsm.storage.base import StorageKey

from botyard.database.documents import Document
from botyard.importers.source import CollectionSource, parse_id


class SeedSource(CollectionSource):
    """One collection of ``{user_id, chat_id, state, data}`` documents."""

    kind = "seed storage"

    def key(self, document: Document) -> StorageKey:
        return StorageKey(
            bot_id=0,
            chat_id=parse_id(document.get("chat_id"), "chat_id"),
            user_id=parse_id(document.get("user_id"), "user_id"),
        )
