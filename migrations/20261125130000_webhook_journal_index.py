"""The webhook journal's ``bot_owner`` index, built here instead of at run time.

``botyard run`` used to build it when it started; with an application user
allowed to read and write but not to build indexes, that fails. Claims (at each
bot's start and every heartbeat) find a bot's entries by ``bot`` and ``owner``.

Building an index that exists with the same options is a no-op (a database that
``botyard run`` used before this migration has it already), so this can run
twice; the index is built outside the session (MongoDB refuses index builds on
an existing collection inside a transaction).
"""

from beanie import free_fall_migration
from beanie.migrations.database import DBHandler
from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.client_session import AsyncClientSession

COLLECTION = "webhook_updates"
INDEX = IndexModel([("bot", ASCENDING), ("owner", ASCENDING)], name="bot_owner")


class Forward:
    @free_fall_migration(document_models=[])
    async def build_bot_owner_index(self, session: AsyncClientSession) -> None:
        await DBHandler.get_db()[COLLECTION].create_indexes([INDEX])


class Backward:
    @free_fall_migration(document_models=[])
    async def drop_bot_owner_index(self, session: AsyncClientSession) -> None:
        collection = DBHandler.get_db()[COLLECTION]
        if "bot_owner" in await collection.index_information():
            await collection.drop_index("bot_owner")
