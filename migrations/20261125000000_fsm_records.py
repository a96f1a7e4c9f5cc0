"""Create the FSM collection, ``fsm_records``, with the indexes BeanieStorage relies on.

A migration is a snapshot: the indexes are written out here rather than read
from ``FSMRecord``, so this file keeps meaning the same schema when the model
changes later (that change is a new migration). tests/test_migrations.py checks
that the last migration leaves exactly the indexes the model declares.

Index builds run outside the migration's session: MongoDB refuses
``createIndexes`` on an existing collection inside a transaction, and a
database that ``botyard run`` used before migrations existed already has the
collection. Building an index that exists with the same options is a no-op, so
running this twice (a crash before Beanie logged it) is harmless.
"""

import contextlib

from beanie import free_fall_migration
from beanie.migrations.database import DBHandler
from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import CollectionInvalid

COLLECTION = "fsm_records"
KEY = ("namespace", "chat_id", "user_id", "thread_id", "business_connection_id", "destiny")
INDEXES = [
    IndexModel([(field, ASCENDING) for field in KEY], name="fsm_key", unique=True),
    IndexModel([("expires_at", ASCENDING)], name="fsm_ttl", expireAfterSeconds=0),
    IndexModel([("namespace", ASCENDING), ("expires_at", ASCENDING)], name="fsm_ns_expires"),
    IndexModel([("namespace", ASCENDING), ("updated_at", ASCENDING)], name="fsm_ns_updated"),
]


class Forward:
    @free_fall_migration(document_models=[])
    async def create_fsm_records(self, session: AsyncClientSession) -> None:
        database = DBHandler.get_db()
        with contextlib.suppress(CollectionInvalid):  # it exists: keep it and its records
            await database.create_collection(COLLECTION)
        await database[COLLECTION].create_indexes(INDEXES)


class Backward:
    @free_fall_migration(document_models=[])
    async def drop_fsm_indexes(self, session: AsyncClientSession) -> None:
        # Only the indexes go: rolling the schema back must not lose a conversation.
        collection = DBHandler.get_db()[COLLECTION]
        existing = await collection.index_information()
        for index in INDEXES:
            name = index.document["name"]
            if name in existing:
                await collection.drop_index(name)
