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
from collections.abc import Iterable
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
    """Reads, creates and rotates webhook secrets in ``database``."""

    def __init__(self, database: AsyncDatabase[Document]) -> None:
        self.collection = database[SECRETS_COLLECTION]

    async def get_or_create(self, bot: str) -> WebhookSecret:
        """The bot's secrets, created on first use; concurrent callers all get the same."""
        generated = {"path": new_secret(), "token": new_secret(), "rotated_at": utcnow()}
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
        return WebhookSecret.from_document(document)

    async def current(self, bots: Iterable[str]) -> dict[str, WebhookSecret]:
        """The stored secrets of ``bots`` (those that have some), in one query."""
        cursor = self.collection.find({"_id": {"$in": list(bots)}})
        return {doc["_id"]: WebhookSecret.from_document(doc) async for doc in cursor}

    async def rotate(self, bot: str) -> WebhookSecret:
        """Replace the bot's secrets with fresh ones (creating them if it had none)."""
        document = await self.collection.find_one_and_update(
            {"_id": bot},
            {"$set": {"path": new_secret(), "token": new_secret(), "rotated_at": utcnow()}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        assert document is not None
        return WebhookSecret.from_document(document)
