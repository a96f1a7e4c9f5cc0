"""Every query on FSM records besides :class:`BeanieStorage`'s own reads and writes.

The cleanup, the metrics, ``botyard states``, the sandbox and the importers ask
:class:`FSMRecords` for what they need; none of them knows the collection, its
fields or its indexes. Every query here goes through an index:
``(namespace, updated_at)``, ``(namespace, purge_at)``,
``(namespace, state, _id)``, the unique key index, or ``_id``.

Work on many records is done in batches: fetch only the ``_id`` of up to
``batch_size`` matching records (a page), then delete or update exactly those,
with the selection repeated in the filter so a record that changed in between
is left alone. Running two such jobs at once therefore touches each record once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiogram.fsm.storage.base import StorageKey
from pymongo import InsertOne, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from botyard.database.documents import Document
from botyard.storage.record import (
    COLLECTION_NAME,
    KEY_FIELDS,
    FSMRecord,
    record_filter,
    storage_key,
)

__all__ = [
    "ExistingRecord",
    "FSMRecords",
    "ImportedRecord",
    "StoredRecord",
    "count_per_state_pipeline",
    "count_up_to_pipeline",
    "identity",
    "realign_filter",
    "stale_filter",
]

#: Set with ``updated_at`` by an import: equal to it while nobody touched the record since.
_IMPORTED_AT = "imported_at"

_ID_ONLY: Document = {"_id": 1}
_CONTENTS: Document = {**dict.fromkeys(KEY_FIELDS, 1), "bot_id": 1, "state": 1, "data": 1}
_SHOWN: Document = {"_id": 0, "state": 1, "data": 1, "updated_at": 1, "expires_at": 1}
_BY_ID = [("_id", 1)]
_BY_PURGE = [("namespace", 1), ("purge_at", 1)]
_BY_ACTIVITY = [("namespace", 1), ("updated_at", 1)]
#: The index MongoDB counts records per state from, without reading one.
STATE_INDEX = "fsm_ns_state"
_BY_STATE = [("namespace", 1), ("state", 1), ("_id", 1)]
_ANY_DATE = datetime.min.replace(tzinfo=UTC)
_DUPLICATE_KEY = 11000

Identity = tuple[Any, ...]
"""A record's unique key, as a tuple of the :data:`KEY_FIELDS` values."""


@dataclass(frozen=True)
class StoredRecord:
    """What an expiring record held: given to ``on_state_expired`` before it goes."""

    key: StorageKey
    state: str | None
    data: dict[str, Any]


@dataclass(frozen=True)
class ExistingRecord:
    """What botyard holds under a key an import wants to write."""

    state: str | None
    data: dict[str, Any]
    updated_at: datetime
    #: Written by an import and untouched since: an import may replace it.
    imported: bool


@dataclass(frozen=True)
class ImportedRecord:
    """A record an import writes."""

    key: StorageKey
    bot_id: int
    state: str | None
    data: dict[str, Any]
    #: ``updated_at`` of the :class:`ExistingRecord` this replaces; ``None``: a new record.
    replaces: datetime | None = None


def stale_filter(namespace: str, state_ttl: timedelta | None, now: datetime) -> Document | None:
    """The records of ``namespace`` idle for ``state_ttl`` at ``now``; ``None`` for never."""
    if state_ttl is None:
        return None
    return {"namespace": namespace, "updated_at": {"$lte": now - state_ttl}}


def realign_filter(
    namespace: str,
    state_ttl: timedelta | None,
    now: datetime,
    horizon: timedelta,
    grace: timedelta = timedelta(0),
) -> Document:
    """Records whose ``purge_at`` would let the TTL index delete them too early.

    Only records the backstop reaches within ``horizon`` are looked at: further
    ones get their turn at a later sweep, and the range keeps this an index scan.
    """
    if state_ttl is None:
        # $ne: null is not an index range on every server; every real date is after year 1.
        return {"namespace": namespace, "purge_at": {"$gt": _ANY_DATE}}
    return {
        "namespace": namespace,
        "purge_at": {"$lte": now + horizon},
        "updated_at": {"$gt": now - state_ttl},
        "$expr": {"$lt": ["$purge_at", _after_activity(state_ttl + grace)]},
    }


def _expiry_dates(state_ttl: timedelta | None, grace: timedelta) -> Document:
    """``expires_at`` and ``purge_at`` from ``updated_at``, as aggregation expressions."""
    if state_ttl is None:
        return {"expires_at": None, "purge_at": None}
    return {
        "expires_at": _after_activity(state_ttl),
        "purge_at": _after_activity(state_ttl + grace),
    }


def _after_activity(delay: timedelta) -> Document:
    """``updated_at + delay`` as an aggregation expression."""
    return {"$add": ["$updated_at", int(delay.total_seconds() * 1000)]}


def count_per_state_pipeline(namespaces: Iterable[str]) -> list[Document]:
    """The aggregation of :meth:`FSMRecords.count_per_state`, run with ``hint=STATE_INDEX``.

    It needs nothing but the index's ``namespace`` and ``state``, so MongoDB
    answers it from the index alone (a covered plan: no record is read).
    """
    return [
        {"$match": {"namespace": {"$in": sorted(namespaces)}}},
        {"$group": {"_id": {"namespace": "$namespace", "state": "$state"}, "n": {"$sum": 1}}},
    ]


def count_up_to_pipeline(namespace: str, state: str | None, limit: int) -> list[Document]:
    """One count of :meth:`FSMRecords.sample_per_state`: what
    ``count_documents(..., limit=limit)`` sends. The scan stops after
    ``limit`` index keys and needs no field, so no record is read on MongoDB."""
    return [
        {"$match": {"namespace": namespace, "state": state}},
        {"$limit": limit},
        {"$group": {"_id": 1, "n": {"$sum": 1}}},
    ]


def _selection(namespace: str, state: str | None, idle_before: datetime | None) -> Document:
    query: Document = {"namespace": namespace}
    if state is not None:
        query["state"] = state
    if idle_before is not None:
        query["updated_at"] = {"$lte": idle_before}
    return query


class FSMRecords:
    """The FSM records of every bot in one database: counted, listed, swept, imported."""

    def __init__(self, database: AsyncDatabase[Document]) -> None:
        self.collection: AsyncCollection[Document] = database[COLLECTION_NAME]

    # reading

    async def find(self, namespace: str, key: StorageKey) -> Document | None:
        """The record's state, data and times as stored, read without refreshing its expiry."""
        return await self.collection.find_one(record_filter(namespace, key), _SHOWN)

    async def count_per_state(self, namespaces: Iterable[str]) -> dict[tuple[str, str | None], int]:
        """Records per ``(namespace, state)``, exactly, counted from the ``(namespace, state,
        _id)`` index in one round trip: one index key per record, and no record read.

        For ``botyard states stats`` and the sandbox, on demand; the metrics'
        sample, taken on a schedule, uses :meth:`sample_per_state`.
        """
        counts: dict[tuple[str, str | None], int] = {}
        pipeline = count_per_state_pipeline(namespaces)
        async for group in await self.collection.aggregate(pipeline, hint=STATE_INDEX):
            key = (group["_id"]["namespace"], group["_id"].get("state"))
            counts[key] = counts.get(key, 0) + group["n"]
        return counts

    async def sample_per_state(
        self, namespaces: Iterable[str], limit: int
    ) -> dict[tuple[str, str | None], int]:
        """Records per ``(namespace, state)``, each count stopping at ``limit``.

        The namespaces holding records are read first, then per namespace its
        states, both from the indexes (distinct scans on MongoDB: a few keys
        per value), then each state is counted in the ``(namespace, state,
        _id)`` index up to ``limit`` keys. At most ``limit`` keys per namespace
        and state are visited, however many records there are, in one round
        trip plus ``1 + states`` per namespace holding records; a count equal
        to ``limit`` means "at least that many".
        """
        counts: dict[tuple[str, str | None], int] = {}
        # Not hinted: every index leading with the namespace serves the first, only
        # (namespace, state, _id) the others; and SecantusDB walks a hinted index whole.
        wanted = {"namespace": {"$in": sorted(namespaces)}}
        for namespace in await self.collection.distinct("namespace", wanted):
            for state in await self.collection.distinct("state", {"namespace": namespace}):
                pipeline = count_up_to_pipeline(namespace, state, limit)
                async for group in await self.collection.aggregate(pipeline):
                    counts[(namespace, state)] = group["n"]
        return counts

    async def oldest_activity(self, namespace: str) -> datetime | None:
        """The earliest ``updated_at`` of ``namespace``'s records: the first key of the
        ``(namespace, updated_at)`` index."""
        first = await self.collection.find_one(
            {"namespace": namespace},
            {"_id": 0, "updated_at": 1},
            sort=_BY_ACTIVITY,
            hint=_BY_ACTIVITY,
        )
        return None if first is None else first["updated_at"]

    async def count_stale(self, namespace: str, state_ttl: timedelta | None, now: datetime) -> int:
        """Records of ``namespace`` idle for ``state_ttl`` at ``now`` (none for never)."""
        stale = stale_filter(namespace, state_ttl, now)
        return 0 if stale is None else await self.collection.count_documents(stale)

    async def count_to_realign(
        self,
        namespace: str,
        state_ttl: timedelta | None,
        now: datetime,
        horizon: timedelta,
        grace: timedelta = timedelta(0),
    ) -> int:
        """Records :meth:`realign` would change."""
        query = realign_filter(namespace, state_ttl, now, horizon, grace)
        return await self.collection.count_documents(query, hint=_BY_PURGE)

    async def count_selected(
        self, namespace: str, *, state: str | None = None, idle_before: datetime | None = None
    ) -> int:
        """Records of ``namespace``, only in ``state`` and idle since ``idle_before`` if given."""
        return await self.collection.count_documents(_selection(namespace, state, idle_before))

    # deleting and fixing

    async def delete_stale(
        self,
        namespace: str,
        state_ttl: timedelta | None,
        now: datetime,
        batch_size: int,
        *,
        before_delete: Callable[[list[StoredRecord]], Awaitable[None]] | None = None,
    ) -> int:
        """Delete the records :meth:`count_stale` counts; return how many went.

        ``before_delete`` is given each batch's records, contents included,
        before they are deleted; without it only their ``_id`` is read.
        """
        stale = stale_filter(namespace, state_ttl, now)
        if stale is None:
            return 0
        if before_delete is None:
            return await self._delete_in_batches(stale, batch_size)

        async def hand_over(batch: list[Document]) -> None:
            await before_delete([_stored_record(document) for document in batch])

        return await self._delete_in_batches(
            stale, batch_size, projection=_CONTENTS, before_delete=hand_over
        )

    async def delete_selected(
        self,
        namespace: str,
        batch_size: int,
        *,
        state: str | None = None,
        idle_before: datetime | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> int:
        """Delete what :meth:`count_selected` counts; ``on_batch`` hears each batch's count.

        One state's records are paged through ``(namespace, state, _id)`` by
        ``_id``, each batch after the last: records of the state that are kept
        (not idle long enough) are read once, not once per batch.
        """
        query = _selection(namespace, state, idle_before)
        by_id = _BY_STATE if state is not None else None
        return await self._delete_in_batches(query, batch_size, on_batch=on_batch, by_id=by_id)

    async def realign(
        self,
        namespace: str,
        state_ttl: timedelta | None,
        now: datetime,
        horizon: timedelta,
        batch_size: int,
        *,
        grace: timedelta = timedelta(0),
    ) -> int:
        """Set ``expires_at = updated_at + state_ttl`` and ``purge_at = expires_at + grace``
        (both none, for never) where :func:`realign_filter` matches; return how many
        records changed."""
        query = realign_filter(namespace, state_ttl, now, horizon, grace)
        expiry = [{"$set": _expiry_dates(state_ttl, grace)}]

        async def update(batch: list[Document]) -> int:
            result = await self.collection.update_many(_within(batch, query), expiry, hint=_BY_ID)
            return result.modified_count

        # Hinted: the planner could pick (namespace, updated_at), a scan of every live record.
        return await self._in_batches(query, batch_size, update, hint=_BY_PURGE)

    async def _delete_in_batches(
        self,
        query: Mapping[str, Any],
        batch_size: int,
        *,
        projection: Mapping[str, Any] = _ID_ONLY,
        before_delete: Callable[[list[Document]], Awaitable[None]] | None = None,
        on_batch: Callable[[int], None] | None = None,
        by_id: list[tuple[str, int]] | None = None,
    ) -> int:
        async def delete(batch: list[Document]) -> int:
            if before_delete is not None:
                await before_delete(batch)
            result = await self.collection.delete_many(_within(batch, query), hint=_BY_ID)
            if on_batch is not None:
                on_batch(result.deleted_count)
            return result.deleted_count

        return await self._in_batches(
            query, batch_size, delete, projection=projection, hint=by_id, by_id=by_id is not None
        )

    async def _in_batches(
        self,
        query: Mapping[str, Any],
        batch_size: int,
        apply: Callable[[list[Document]], Awaitable[int]],
        *,
        projection: Mapping[str, Any] = _ID_ONLY,
        hint: list[tuple[str, int]] | None = None,
        by_id: bool = False,
    ) -> int:
        """Fetch a page of ``batch_size`` matches, ``apply`` to it, repeat until none are left.

        ``apply`` must make the records stop matching (delete or fix them);
        otherwise the next fetch would return them again. With ``by_id`` each
        page starts after the last ``_id`` of the previous one, in ``_id`` order.
        """
        done = 0
        last: Any = None
        while True:
            page = query if last is None else {**query, "_id": {"$gt": last}}
            cursor = self.collection.find(page, projection, limit=batch_size, batch_size=batch_size)
            if by_id:
                cursor = cursor.sort("_id", 1)
            if hint is not None:
                cursor = cursor.hint(hint)
            batch = await cursor.to_list()
            if not batch:
                return done
            done += await apply(batch)
            if len(batch) < batch_size:
                return done
            if by_id:
                last = batch[-1]["_id"]

    # importing

    async def find_for_import(
        self, namespace: str, keys: Iterable[StorageKey]
    ) -> dict[Identity, ExistingRecord]:
        """The records of these keys, by :func:`identity`; one query through the key index.

        Only the index's leading fields are matched (the rest is sorted out by
        the lookup): adding ``user_id: {$in: ...}`` makes SecantusDB scan, 30
        times slower.
        """
        query = {"namespace": namespace, "chat_id": {"$in": sorted({key.chat_id for key in keys})}}
        projection = {**dict.fromkeys(KEY_FIELDS, 1), "state": 1, "data": 1, "updated_at": 1}
        projection[_IMPORTED_AT] = 1
        found: dict[Identity, ExistingRecord] = {}
        async for document in self.collection.find(query, projection):
            found[tuple(document.get(field) for field in KEY_FIELDS)] = ExistingRecord(
                document.get("state"),
                document.get("data") or {},
                document["updated_at"],
                imported=document.get(_IMPORTED_AT) == document["updated_at"],
            )
        return found

    async def write_imported(
        self,
        namespace: str,
        records: list[ImportedRecord],
        *,
        now: datetime,
        state_ttl: timedelta | None,
        ttl_grace: timedelta = timedelta(0),
    ) -> int:
        """Insert the new records, replace the existing ones; return how many were written.

        One unordered bulk write. Inserts rely on the unique key index, so a
        record botyard created meanwhile is never replaced; replacements match
        the ``updated_at`` that was read, so a conversation that moved on
        meanwhile is left alone. Neither is written nor counted.
        """
        operations: list[InsertOne[Document] | UpdateOne] = []
        for record in records:
            document = _imported_document(namespace, record, now, state_ttl, ttl_grace)
            if record.replaces is None:
                operations.append(InsertOne(document))
            else:
                operations.append(_replacement(document, record.replaces))
        try:
            result = await self.collection.bulk_write(operations, ordered=False)
        except BulkWriteError as error:
            details = error.details
            if any(item.get("code") != _DUPLICATE_KEY for item in details["writeErrors"]):
                raise
            return int(details["nInserted"] + details["nModified"])
        return result.inserted_count + result.modified_count


def identity(namespace: str, key: StorageKey) -> Identity:
    """The unique key of ``key``'s record in ``namespace``, as :meth:`find_for_import` files it."""
    return tuple(record_filter(namespace, key).values())


def _imported_document(
    namespace: str,
    record: ImportedRecord,
    now: datetime,
    state_ttl: timedelta | None,
    ttl_grace: timedelta,
) -> Document:
    """The record as BeanieStorage stores it: validated by the storage's own model."""
    model = FSMRecord.model_validate(
        {
            **record_filter(namespace, record.key),
            "bot_id": record.bot_id,
            "state": record.state,
            "data": record.data,
            "updated_at": now,
            "expires_at": None if state_ttl is None else now + state_ttl,
            "purge_at": None if state_ttl is None else now + state_ttl + ttl_grace,
        }
    )
    return {**model.model_dump(exclude={"id", "revision_id"}), _IMPORTED_AT: now}


def _replacement(document: Document, replaces: datetime) -> UpdateOne:
    # $literal: data keys with '.' or a leading '$' are stored as they are, as
    # BeanieStorage stores them, not read as paths or operators.
    changes = {name: {"$literal": document[name]} for name in ("state", "data")}
    for name in ("bot_id", "updated_at", "expires_at", "purge_at", _IMPORTED_AT):
        changes[name] = document[name]
    match = {**{field: document[field] for field in KEY_FIELDS}, "updated_at": replaces}
    return UpdateOne(match, [{"$set": changes}])


def _within(batch: list[Document], query: Mapping[str, Any]) -> Document:
    """``query`` narrowed to the batch: a record changed since it was fetched is left alone."""
    return {**query, "_id": {"$in": [document["_id"] for document in batch]}}


def _stored_record(document: Document) -> StoredRecord:
    return StoredRecord(
        storage_key(document), document.get("state"), dict(document.get("data") or {})
    )
