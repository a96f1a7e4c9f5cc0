"""Each webhook bot's two random secrets, kept in MongoDB so restarts and replicas agree.

A webhook URL must not contain the bot token (URLs end up in proxy and access
logs), yet must not be guessable either: each bot gets a random *path secret*
in its URL and a random *secret token* that Telegram sends back in the
``X-Telegram-Bot-Api-Secret-Token`` header of every request. Both are generated
once per bot and stored in the ``webhook_secrets`` collection, one document
per bot name; every process serving the registry reads the same values, and
``botyard webhook rotate`` replaces them (running processes pick the new ones
up and call ``setWebhook`` again).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from botyard.database.documents import Document
from botyard.storage import utcnow

__all__ = ["SECRETS_COLLECTION", "SecretStore", "WebhookSecret", "new_secret"]

SECRETS_COLLECTION = "webhook_secrets"
#: 32 random bytes, URL-safe base64: only ``A-Za-z0-9_-``, as Telegram requires of secret_token.
SECRET_BYTES = 32


def new_secret() -> str:
    """A fresh random secret, valid both as a URL path segment and as a ``secret_token``."""
    return secrets.token_urlsafe(SECRET_BYTES)


@dataclass(frozen=True)
class WebhookSecret:
    """The secrets of one bot's webhook; ``repr`` never shows them."""

    bot: str
    path: str = field(repr=False)
    token: str = field(repr=False)
    rotated_at: datetime

    @classmethod
    def from_document(cls, document: Document) -> WebhookSecret:
        return cls(
            bot=document["_id"],
            path=document["path"],
            token=document["token"],
            rotated_at=document["rotated_at"],
        )


class SecretStore:
    """Reads, creates and rotates webhook secrets in ``database``.

    ``on_read`` is told the secrets of every document read or written, for the
    log filter to mask them from then on.
    """

    def __init__(
        self,
        database: AsyncDatabase[Document],
        on_read: Callable[[Iterable[str]], None] | None = None,
    ) -> None:
        self.collection = database[SECRETS_COLLECTION]
        self._on_read = on_read

    def _tell(self, *values: str) -> None:
        if self._on_read is not None:
            self._on_read(values)

    def _secret(self, document: Document) -> WebhookSecret:
        secret = WebhookSecret.from_document(document)
        self._tell(secret.path, secret.token)
        return secret

    async def get_or_create(self, bot: str) -> WebhookSecret:
        """The bot's secrets, created on first use; concurrent callers all get the same."""
        path, token = new_secret(), new_secret()
        self._tell(path, token)  # before the write's log could show them
        generated = {"path": path, "token": token, "rotated_at": utcnow()}
        try:
            document = await self.collection.find_one_and_update(
                {"_id": bot},
                {"$setOnInsert": generated},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:  # another process inserted it first: read theirs
            document = await self.collection.find_one({"_id": bot})
        assert document is not None
        return self._secret(document)

    async def current(self, bots: Iterable[str]) -> dict[str, WebhookSecret]:
        """The stored secrets of ``bots`` (those that have some), in one query."""
        cursor = self.collection.find({"_id": {"$in": list(bots)}})
        return {doc["_id"]: self._secret(doc) async for doc in cursor}

    async def rotate(self, bot: str) -> WebhookSecret:
        """Replace the bot's secrets with fresh ones (creating them if it had none)."""
        path, token = new_secret(), new_secret()
        self._tell(path, token)
        document = await self.collection.find_one_and_update(
            {"_id": bot},
            {"$set": {"path": path, "token": token, "rotated_at": utcnow()}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        assert document is not None
        return self._secret(document)
