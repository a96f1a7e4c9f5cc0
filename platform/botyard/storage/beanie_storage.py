"""aiogram FSM storage on MongoDB, namespaced per bot, one read and one write per update."""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

from aiogram import Dispatcher
from aiogram.exceptions import DataNotDictLikeError
from aiogram.fsm.state import State
from aiogram.fsm.storage.base import BaseStorage, StateType, StorageKey
from aiogram.fsm.storage.memory import DisabledEventIsolation
from beanie import init_beanie
from pymongo import DeleteOne, ReturnDocument, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure

from botyard.database.client import mongo_client
from botyard.database.documents import Clock, Document, utcnow
from botyard.storage.bson_values import FSMDataError, check_size, check_storable
from botyard.storage.gate import gate_for
from botyard.storage.record import COLLECTION_NAME, FSMRecord, record_filter
from botyard.storage.scope import (
    UNSET,
    KeyedLocks,
    PendingRecord,
    UpdateScopeMiddleware,
    current_scope,
)

_DUPLICATE_KEY = 11000
_PROJECTION = {"_id": 0, "state": 1, "data": 1, "updated_at": 1, "expires_at": 1}
#: MongoDB's codes for a document that an update would make larger than 16 MB.
_TOO_LARGE = frozenset({10334, 17419, 17420})


async def prepare_database(
    database: AsyncDatabase[Document], *, create_indexes: bool = True
) -> None:
    """Bind the Beanie model to ``database`` and create the FSM indexes (unless told not to)."""
    await init_beanie(
        database=database, document_models=[FSMRecord], skip_indexes=not create_indexes
    )


#: The records collection of each database in use, one object for all its storages:
#: PyMongo makes a new one (434 bytes with its options) on every ``database[name]``, one
#: per bot before. Keyed by the database's id: a collection holds its database, so while
#: an entry lives, that id is still its database's.
_COLLECTIONS: weakref.WeakValueDictionary[int, AsyncCollection[Document]] = (
    weakref.WeakValueDictionary()
)


def records_collection(database: AsyncDatabase[Document]) -> AsyncCollection[Document]:
    """The FSM records collection of ``database``, shared by every storage on it."""
    collection = _COLLECTIONS.get(id(database))
    if collection is None:
        collection = _COLLECTIONS[id(database)] = database[COLLECTION_NAME]
    return collection


class BeanieStorage(BaseStorage):
    """aiogram FSM storage keeping each bot's records under its own namespace.

    A record expires ``state_ttl`` after its last activity (``expires_at``);
    MongoDB's TTL index deletes it ``ttl_grace`` later (``purge_at``), so that
    botyard's sweep, which calls ``on_state_expired``, comes first. Without a
    sweep (a plain aiogram bot) leave ``ttl_grace`` at zero.

    Many bots share one :class:`~pymongo.AsyncMongoClient`: each bot gets a cheap
    view (:meth:`for_namespace`), and closing a view never closes the shared
    client — aiogram's Dispatcher closes its storage on shutdown. Only a storage
    made by :meth:`connect` owns its client and closes it.

    Inside an update scope (see :meth:`install`) a record is read at most once
    and written once, when the update's handling ends; elsewhere every call
    reads or writes straight through.
    """

    def __init__(
        self,
        database: AsyncDatabase[Document],
        namespace: str,
        *,
        state_ttl: timedelta | None = None,
        ttl_grace: timedelta = timedelta(0),
        owns_client: bool = False,
        clock: Clock = utcnow,
    ) -> None:
        if not namespace:
            raise ValueError("namespace must be a non-empty string")
        if state_ttl is not None and state_ttl <= timedelta(0):
            raise ValueError("state_ttl must be positive, or None for no expiry")
        if ttl_grace < timedelta(0):
            raise ValueError("ttl_grace must not be negative")
        self.database = database
        self.namespace = namespace
        self.state_ttl = state_ttl
        #: How long after ``expires_at`` MongoDB's TTL index may delete a record
        #: (``purge_at``): time for a sweep to remove it first and call its hook.
        self.ttl_grace = ttl_grace
        self._owns_client = owns_client
        #: Dates records' ``updated_at`` and ``expires_at``.
        self.clock = clock
        self.collection = records_collection(database)
        #: Shared by every storage on the client: operations beyond its pool wait here.
        self._gate = gate_for(database.client)

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        database: str = "botyard",
        namespace: str,
        state_ttl: timedelta | None = None,
        ttl_grace: timedelta = timedelta(0),
        **client_options: Any,
    ) -> BeanieStorage:
        """Open a client of its own, create the indexes, and return a storage owning it.

        The client has botyard's timeouts (``timeout=timedelta(...)`` bounds each
        operation, 10 s by default); other keywords go to ``AsyncMongoClient``.
        """
        client = mongo_client(url, **client_options)
        db = client[database]
        try:
            await prepare_database(db)
        except BaseException:
            await client.close()
            raise
        return cls(db, namespace, state_ttl=state_ttl, ttl_grace=ttl_grace, owns_client=True)

    def for_namespace(self, namespace: str, *, state_ttl: timedelta | None = None) -> BeanieStorage:
        """A storage for another bot on the same client (which it does not own), same grace."""
        return BeanieStorage(
            self.database,
            namespace,
            state_ttl=state_ttl,
            ttl_grace=self.ttl_grace,
            clock=self.clock,
        )

    def install(self, dispatcher: Dispatcher) -> None:
        """Use this storage in ``dispatcher`` with one read and one write per update.

        The scope middleware goes before aiogram's FSM middleware, so the state
        read that middleware makes on every update is the scope's single read.
        Each update's writes are stored when its handling ends, after its
        replies; so that the conversation's next update cannot read before
        that, the scope holds the update's key locked until its writes are
        stored. The dispatcher's own events isolation, if it has one, is the
        lock (moved out of the FSM middleware, which would release it before
        the writes); without one, a lock per key that is dropped when unused.
        """
        if dispatcher.fsm.storage is not self:
            dispatcher.fsm.storage = self
        outer = dispatcher.update.outer_middleware
        if any(isinstance(middleware, UpdateScopeMiddleware) for middleware in outer):
            return
        isolation = dispatcher.fsm.events_isolation
        if isinstance(isolation, DisabledEventIsolation):
            isolation = KeyedLocks()
        else:
            dispatcher.fsm.events_isolation = DisabledEventIsolation()
        fsm_registered = dispatcher.fsm in outer
        if fsm_registered:
            outer.unregister(dispatcher.fsm)
        outer.register(UpdateScopeMiddleware(dispatcher.fsm, isolation))
        if fsm_registered:
            outer.register(dispatcher.fsm)

    async def close(self) -> None:
        if self._owns_client:
            await self.database.client.close()

    # aiogram's storage interface

    async def get_state(self, key: StorageKey) -> str | None:
        record = await self._pending(key, need_state=True)
        return record.state

    async def set_state(self, key: StorageKey, state: StateType = None) -> None:
        value = state.state if isinstance(state, State) else state
        scope = current_scope()
        if scope is None:
            record = PendingRecord()
            record.set_state(value)
            await self.write_records({key: record})
        else:
            scope.record(self, key).set_state(value)

    async def get_data(self, key: StorageKey) -> dict[str, Any]:
        record = await self._pending(key, need_data=True)
        return record.data

    async def set_data(self, key: StorageKey, data: Mapping[str, Any]) -> None:
        if not isinstance(data, dict):
            raise DataNotDictLikeError(
                f"Data must be a dict or dict-like object, got {type(data).__name__}"
            )
        check_storable(data)
        check_size(data, self._conversation(key))
        scope = current_scope()
        if scope is None:
            record = PendingRecord()
            record.set_data(data)
            await self.write_records({key: record})
        else:
            scope.record(self, key).set_data(data)

    async def update_data(self, key: StorageKey, data: Mapping[str, Any]) -> dict[str, Any]:
        """Merge ``data`` into the stored data atomically and return the result.

        The merge happens in MongoDB (``$mergeObjects``), so concurrent updates
        of different keys of one record all survive, and keys with ``.`` or a
        leading ``$`` are stored as they are, not as nested paths.
        """
        patch = dict(data)
        check_storable(patch)
        scope = current_scope()
        if scope is None:
            check_size(patch, self._conversation(key))  # the merge is the server's
            return await self._update_data_now(key, patch)
        record = scope.record(self, key)
        if not record.knows_data:
            await self._load(key, record)
        check_size(record.data_with(patch), self._conversation(key))
        record.update_data(patch)
        return record.data

    def _conversation(self, key: StorageKey) -> str:
        """Which bot and conversation ``key`` is, for error messages."""
        return f"bot {self.namespace!r} (chat {key.chat_id}, user {key.user_id})"

    # reading and writing

    async def _pending(
        self, key: StorageKey, *, need_state: bool = False, need_data: bool = False
    ) -> PendingRecord:
        scope = current_scope()
        record = PendingRecord() if scope is None else scope.record(self, key)
        if (need_state and not record.knows_state) or (need_data and not record.knows_data):
            await self._load(key, record)
        return record

    def _turn(self) -> AbstractAsyncContextManager[None]:
        """Wait for a place among the operations in flight (see :mod:`botyard.storage.gate`)."""
        return contextlib.nullcontext() if self._gate is None else self._gate

    async def _load(self, key: StorageKey, record: PendingRecord) -> None:
        async with self._turn():
            document = await self.collection.find_one(
                record_filter(self.namespace, key), _PROJECTION
            )
        if document is not None:
            for field in ("updated_at", "expires_at"):
                value = document.get(field)
                if value is not None and value.tzinfo is None:
                    document[field] = value.replace(tzinfo=UTC)
        record.load(document)

    def _expiry(self, now: datetime) -> Document:
        """``expires_at`` and ``purge_at`` of a record active at ``now``."""
        if self.state_ttl is None:
            return {"expires_at": None, "purge_at": None}
        expires_at = now + self.state_ttl
        return {"expires_at": expires_at, "purge_at": expires_at + self.ttl_grace}

    async def _update_data_now(self, key: StorageKey, patch: dict[str, Any]) -> dict[str, Any]:
        record = PendingRecord()
        record.update_data(patch)
        now = self.clock()
        try:
            document = await self._retry_duplicate(
                self.collection.find_one_and_update,
                record_filter(self.namespace, key),
                self._upsert_pipeline(key, record, now),
                projection={"_id": 0, "data": 1},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        except OperationFailure as error:
            # The merge is the server's, so only the server knows the merged size.
            if error.code not in _TOO_LARGE:
                raise
            raise FSMDataError(
                f"FSM data of {self._conversation(key)} merged with the keys "
                f"{', '.join(map(repr, patch))} would exceed MongoDB's 16 MB per "
                "conversation; nothing was written"
            ) from None
        return dict(document["data"]) if document else patch

    async def write_records(self, records: Mapping[StorageKey, PendingRecord]) -> None:
        """Write what an update changed: one round trip unless a clear is ambiguous.

        Clearing state or data must not leave an empty record, and must not race
        like a find-then-delete. When the other half of the record is not known
        to be empty or full, a conditional delete goes first and an update
        follows only if the record turned out not to be empty.
        """
        now = self.clock()
        plain: list[UpdateOne | DeleteOne] = []
        conditional: list[tuple[Document, UpdateOne]] = []
        for key, record in records.items():
            operation = self._operation(key, record, now)
            if isinstance(operation, tuple):
                conditional.append(operation)
            elif operation is not None:
                plain.append(operation)
        if plain:
            await self._bulk_write(plain)
        for delete_filter, fallback in conditional:
            async with self._turn():
                deleted = await self.collection.delete_one(delete_filter)
            if deleted.deleted_count == 0:
                await self._bulk_write([fallback])

    def _operation(
        self, key: StorageKey, record: PendingRecord, now: datetime
    ) -> UpdateOne | DeleteOne | tuple[Document, UpdateOne] | None:
        match_key = record_filter(self.namespace, key)
        if not record.dirty:
            return self._refresh(match_key, record, now)
        clears_state = record.new_state is None
        clears_data = record.new_data == {} and not record.data_patch
        keeps_data = record.new_data is None and not record.data_patch
        keeps_state = record.new_state is UNSET
        if clears_state and clears_data:
            return DeleteOne(match_key)
        pipeline = self._upsert_pipeline(key, record, now)
        if (clears_state and keeps_data) or (clears_data and keeps_state):
            empty_other: Document = {"data": {}} if clears_state else {"state": None}
            update = UpdateOne(match_key, pipeline, upsert=False)
            if record.loaded and (
                record.stored_data if clears_state else record.stored_state is not None
            ):
                return update  # the other half is known to hold something
            return {**match_key, **empty_other}, update
        # A record this update read and that is gone now was removed by the cleanup
        # meanwhile: a write that keeps part of it must not bring back the rest empty.
        whole = record.new_state is not UNSET and record.new_data is not None
        return UpdateOne(match_key, pipeline, upsert=whole or not record.exists)

    def _refresh(
        self, match_key: Document, record: PendingRecord, now: datetime
    ) -> UpdateOne | None:
        """Keep a read-only conversation alive, writing at most once per tenth of the TTL."""
        if self.state_ttl is None or not record.exists or record.stored_updated_at is None:
            return None
        fresh = now - record.stored_updated_at < self.state_ttl / 10
        if fresh and record.stored_expires_at is not None:
            return None
        # Matching the read's updated_at: a record changed or deleted since stays as it is.
        return UpdateOne(
            {**match_key, "updated_at": record.stored_updated_at},
            {"$set": {"updated_at": now, **self._expiry(now)}},
        )

    def _upsert_pipeline(
        self, key: StorageKey, record: PendingRecord, now: datetime
    ) -> list[Document]:
        fields: Document = {
            "bot_id": key.bot_id,
            "updated_at": now,
            **self._expiry(now),
            "state": {"$ifNull": ["$state", None]},
            "data": {"$ifNull": ["$data", {}]},
        }
        if record.new_state is None or isinstance(record.new_state, str):
            fields["state"] = {"$literal": record.new_state}
        if record.new_data is not None:
            fields["data"] = {"$literal": {**record.new_data, **record.data_patch}}
        elif record.data_patch:
            fields["data"] = {
                "$mergeObjects": [{"$ifNull": ["$data", {}]}, {"$literal": record.data_patch}]
            }
        return [{"$set": fields}]

    async def _retry_duplicate(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a single-document upsert, once more if a concurrent one inserted the record
        first (``DuplicateKeyError``): sent again, it updates. MongoDB retries such
        upserts itself; other wire-compatible servers may not."""
        try:
            async with self._turn():
                return await function(*args, **kwargs)
        except DuplicateKeyError:
            await asyncio.sleep(0)
            async with self._turn():
                return await function(*args, **kwargs)

    async def _bulk_write(self, operations: list[UpdateOne | DeleteOne]) -> None:
        """Write in one round trip; upserts that lost a race to insert are sent once more.

        Two first writes of one conversation at once both try to insert its
        record, and the loser fails on the unique key: in a bulk write that is a
        ``BulkWriteError`` whose write errors have code 11000, never a
        ``DuplicateKeyError``. MongoDB retries such upserts itself; other
        wire-compatible servers may not. Sent again, they update the record the
        winner inserted. Any other error (a retryable one of a failover among
        them) goes to the caller, which handles the update again.
        """
        try:
            async with self._turn():
                await self.collection.bulk_write(operations, ordered=False)
        except BulkWriteError as error:
            failed = error.details.get("writeErrors") or []
            if (
                not failed
                or error.details.get("writeConcernErrors")
                or any(item.get("code") != _DUPLICATE_KEY for item in failed)
            ):
                raise
            await asyncio.sleep(0)
            async with self._turn():
                await self.collection.bulk_write(
                    [operations[item["index"]] for item in failed], ordered=False
                )
