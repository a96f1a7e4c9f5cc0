"""The ``fsm_ns_state`` index, ``(namespace, state, _id)``: counts per state without a scan.

The metrics' sample of FSM records per bot and state was a ``$group`` over every
record of every bot; with this index MongoDB answers it from the index alone (a
covered plan: no document is read). ``botyard states purge --state`` pages
through it by ``_id`` instead of scanning the bot's records again per batch.

Building an index that exists with the same options is a no-op (``botyard run``
builds it too), so this can run twice; it is built outside the session (MongoDB
refuses index builds on an existing collection inside a transaction). On a large
collection the build takes a while; MongoDB builds it without blocking writes.
"""

from beanie import free_fall_migration
from beanie.migrations.database import DBHandler
from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.client_session import AsyncClientSession

COLLECTION = "fsm_records"
INDEX = IndexModel(
    [("namespace", ASCENDING), ("state", ASCENDING), ("_id", ASCENDING)], name="fsm_ns_state"
)


class Forward:
    @free_fall_migration(document_models=[])
    async def build_state_index(self, session: AsyncClientSession) -> None:
        await DBHandler.get_db()[COLLECTION].create_indexes([INDEX])


class Backward:
    @free_fall_migration(document_models=[])
    async def drop_state_index(self, session: AsyncClientSession) -> None:
        collection = DBHandler.get_db()[COLLECTION]
        if "fsm_ns_state" in await collection.index_information():
            await collection.drop_index("fsm_ns_state")
