"""aiogram 3's ``MongoStorage``/``PyMongoStorage``: one document per key.

``{_id: "<key>", state, data}``, where the key is what aiogram's
``DefaultKeyBuilder`` built:
``<prefix>:<bot_id?>:<business_connection_id?>:<chat_id>:<thread_id?>:<user_id>:<destiny?>``.
Which optional parts are there depends on how the old bot configured its key
builder, hence :class:`KeyLayout`; the thread id is there when it was set.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiogram.fsm.storage.base import DEFAULT_DESTINY, StorageKey
from pymongo.asynchronous.collection import AsyncCollection

from botyard.database.documents import Document
from botyard.importers.source import CollectionSource, ParseError, parse_id


@dataclass(frozen=True)
class KeyLayout:
    """The ``DefaultKeyBuilder`` settings the old bot used."""

    prefix: str = "fsm"
    separator: str = ":"
    with_bot_id: bool = False
    with_business_connection_id: bool = False
    with_destiny: bool = False

    def parse(self, key: object) -> StorageKey:
        """The aiogram key ``key`` was built from; :class:`ParseError` if it was not."""
        if not isinstance(key, str):
            raise ParseError(f"_id is a {type(key).__name__}, not an aiogram key string")
        head = f"{self.prefix}{self.separator}"
        if not key.startswith(head):
            raise ParseError(f"does not start with {head!r} (see --prefix, --separator)")
        parts = key[len(head) :].split(self.separator)
        bot_id = parse_id(parts.pop(0), "bot id") if self.with_bot_id and parts else 0
        if self.with_destiny and len(parts) < 3:
            raise ParseError(f"expected {self._shape()}: no destiny after the user id")
        destiny = parts.pop() if self.with_destiny else DEFAULT_DESTINY
        business_connection_id = None
        if self.with_business_connection_id and len(parts) > 2 and not _is_int(parts[0]):
            business_connection_id = parts.pop(0)
        if len(parts) not in (2, 3) or not destiny:
            raise ParseError(
                f"expected {self._shape()} (do --with-bot-id, --with-destiny and "
                "--with-business-connection-id match the old bot's key builder?)"
            )
        chat_id = parse_id(parts[0], "chat id")
        thread_id = parse_id(parts[1], "thread id") if len(parts) == 3 else None
        user_id = parse_id(parts[-1], "user id")
        return StorageKey(
            bot_id=bot_id,
            chat_id=chat_id,
            user_id=user_id,
            thread_id=thread_id,
            business_connection_id=business_connection_id,
            destiny=destiny,
        )

    def _shape(self) -> str:
        parts = [self.prefix]
        if self.with_bot_id:
            parts.append("<bot_id>")
        if self.with_business_connection_id:
            parts.append("<business_connection_id?>")
        parts += ["<chat_id>", "<thread_id?>", "<user_id>"]
        if self.with_destiny:
            parts.append("<destiny>")
        return self.separator.join(parts)


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


class Aiogram3Source(CollectionSource):
    """One aiogram 3 ``MongoStorage``/``PyMongoStorage`` collection; ``_id`` is the key."""

    kind = "aiogram 3 storage"

    def __init__(
        self, collection: AsyncCollection[Document], label: str, layout: KeyLayout
    ) -> None:
        super().__init__(collection, label)
        self.layout = layout

    def key(self, document: Document) -> StorageKey:
        return self.layout.parse(document["_id"])
