"""The FSM record: one document per (namespace, aiogram storage key)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiogram.fsm.storage.base import DEFAULT_DESTINY, StorageKey
from beanie import Document
from pydantic import Field
from pymongo import ASCENDING, IndexModel

COLLECTION_NAME = "fsm_records"

#: Fields that identify a record, in the order of the unique index.
KEY_FIELDS = (
    "namespace",
    "chat_id",
    "user_id",
    "thread_id",
    "business_connection_id",
    "destiny",
)


class FSMRecord(Document):
    """aiogram FSM state and data of one chat/user of one bot.

    ``namespace`` keeps bots apart in the shared collection; the rest of the key
    mirrors every field of aiogram's :class:`StorageKey`. A record with no state
    and empty data is never kept: clearing a conversation deletes its record.
    """

    namespace: str
    chat_id: int
    user_id: int
    thread_id: int | None = None
    business_connection_id: str | None = None
    destiny: str = DEFAULT_DESTINY
    bot_id: int
    state: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    #: Last activity: a write, or a read that refreshed the expiry.
    updated_at: datetime
    #: When the record becomes stale (``updated_at + state_ttl``); ``None``: never.
    expires_at: datetime | None = None
    #: When MongoDB's TTL monitor deletes the record on its own: ``expires_at`` plus
    #: a grace long enough for the cleanup sweep, which calls ``on_state_expired``,
    #: to remove it first (see :func:`botyard.cleanup.sweep.backstop_grace`).
    purge_at: datetime | None = None

    class Settings:
        name = COLLECTION_NAME
        indexes = [
            IndexModel([(field, ASCENDING) for field in KEY_FIELDS], name="fsm_key", unique=True),
            # MongoDB's own TTL monitor: the backstop behind the scheduled sweep.
            IndexModel([("purge_at", ASCENDING)], name="fsm_purge", expireAfterSeconds=0),
            # The sweep finds one namespace's stale records, and the backstop dates
            # it must push back.
            IndexModel([("namespace", ASCENDING), ("purge_at", ASCENDING)], name="fsm_ns_purge"),
            IndexModel(
                [("namespace", ASCENDING), ("updated_at", ASCENDING)], name="fsm_ns_updated"
            ),
            # Counts per state from the index alone (the metrics' sample), and purges
            # of one state paged by _id.
            IndexModel(
                [("namespace", ASCENDING), ("state", ASCENDING), ("_id", ASCENDING)],
                name="fsm_ns_state",
            ),
        ]


def record_filter(namespace: str, key: StorageKey) -> dict[str, Any]:
    """The unique-index filter for ``key`` in ``namespace``."""
    return {
        "namespace": namespace,
        "chat_id": key.chat_id,
        "user_id": key.user_id,
        "thread_id": key.thread_id,
        "business_connection_id": key.business_connection_id,
        "destiny": key.destiny,
    }


def storage_key(document: dict[str, Any], bot_id: int | None = None) -> StorageKey:
    """Rebuild aiogram's :class:`StorageKey` from a stored document."""
    return StorageKey(
        bot_id=bot_id if bot_id is not None else int(document.get("bot_id") or 0),
        chat_id=int(document["chat_id"]),
        user_id=int(document["user_id"]),
        thread_id=document.get("thread_id"),
        business_connection_id=document.get("business_connection_id"),
        destiny=document.get("destiny") or DEFAULT_DESTINY,
    )
