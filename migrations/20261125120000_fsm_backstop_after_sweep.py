"""MongoDB's TTL index deletes FSM records by ``purge_at``, after the sweep had its chance.

Before, the TTL index was on ``expires_at`` itself: MongoDB's TTL monitor (once a
minute) deleted an expired record long before the cleanup sweep (every 10
minutes by default) could call the bot's ``on_state_expired`` hook for it. Now
``expires_at`` keeps meaning "expired at last activity + state_ttl", and the
storage also writes ``purge_at``, ``expires_at`` plus a grace of two cleanup
periods and a margin; the TTL index moves there.

Forward, in this order, so that no record is ever without a backstop:
1. build the new indexes (``fsm_purge``, the TTL index, and ``fsm_ns_purge``,
   which the sweep's realignment reads);
2. give every record that has an ``expires_at`` but no ``purge_at`` one,
   ``expires_at + GRACE``, in batches of ``BATCH`` paged by ``_id`` ranges;
3. drop the old ``fsm_ttl`` and ``fsm_ns_expires``.

``GRACE`` is generous (two days) because a migration does not know the
registry's ``cleanup.schedule``: the sweep removes these records on time
anyway, by ``updated_at``, and records written from now on get the grace their
schedule calls for. A record touched again gets its new dates as usual.

It runs without a transaction (``use_transaction = False``): a transaction on
MongoDB is aborted 60 s after it started, and this visits every record. Each
step can run again: the indexes are built only where missing, a batch sets
``purge_at`` only where it is still missing, and dropping an absent index is
skipped. Backward restores the old indexes and removes ``purge_at``, in the
same spirit.
"""

from datetime import timedelta

from beanie import free_fall_migration
from beanie.migrations.database import DBHandler
from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection

COLLECTION = "fsm_records"
GRACE = timedelta(days=2)
BATCH = 1000
NEW_INDEXES = [
    IndexModel([("purge_at", ASCENDING)], name="fsm_purge", expireAfterSeconds=0),
    IndexModel([("namespace", ASCENDING), ("purge_at", ASCENDING)], name="fsm_ns_purge"),
]
OLD_INDEXES = [
    IndexModel([("expires_at", ASCENDING)], name="fsm_ttl", expireAfterSeconds=0),
    IndexModel([("namespace", ASCENDING), ("expires_at", ASCENDING)], name="fsm_ns_expires"),
]


async def in_batches(collection: AsyncCollection, batch_filter: dict, update: list) -> None:
    """Apply ``update`` to every record matching ``batch_filter``, ``BATCH`` ids at a time."""
    last = None
    while True:
        page = {} if last is None else {"_id": {"$gt": last}}
        ids = [
            document["_id"]
            async for document in collection.find(page, {"_id": 1})
            .sort("_id", ASCENDING)
            .limit(BATCH)
        ]
        if not ids:
            return
        # A range, not $in: the same records, and one index range instead of 1,000 lookups.
        batch = {"_id": {"$gte": ids[0], "$lte": ids[-1]}}
        await collection.update_many({**batch, **batch_filter}, update)
        last = ids[-1]


async def drop_indexes(collection: AsyncCollection, indexes: list[IndexModel]) -> None:
    existing = await collection.index_information()
    for index in indexes:
        name = index.document["name"]
        if name in existing:
            await collection.drop_index(name)


class Forward:
    use_transaction = False

    @free_fall_migration(document_models=[])
    async def purge_after_the_sweep(self, session: AsyncClientSession) -> None:
        collection = DBHandler.get_db()[COLLECTION]
        await collection.create_indexes(NEW_INDEXES)
        grace_ms = int(GRACE.total_seconds() * 1000)
        await in_batches(
            collection,
            {"purge_at": {"$exists": False}, "expires_at": {"$type": "date"}},
            [{"$set": {"purge_at": {"$add": ["$expires_at", grace_ms]}}}],
        )
        await drop_indexes(collection, OLD_INDEXES)


class Backward:
    use_transaction = False

    @free_fall_migration(document_models=[])
    async def purge_at_expiry(self, session: AsyncClientSession) -> None:
        collection = DBHandler.get_db()[COLLECTION]
        await collection.create_indexes(OLD_INDEXES)
        await in_batches(collection, {"purge_at": {"$exists": True}}, [{"$unset": "purge_at"}])
        await drop_indexes(collection, NEW_INDEXES)
