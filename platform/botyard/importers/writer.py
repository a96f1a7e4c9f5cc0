"""Writing imported records in the shape :class:`BeanieStorage` reads, without losing any.

Per batch: one query reads the botyard records the batch's keys already have,
then one unordered bulk write inserts the new ones and updates the ones an
earlier import wrote and nobody touched since. A record botyard wrote (or that
a user touched after the import) is newer than any source and is kept, unless
``overwrite``. Inserts rely on the unique key index, so a record botyard
creates meanwhile is never replaced; updates match the ``updated_at`` that was
read, so a conversation that moved on meanwhile is left alone. Identical
records are not written at all: a second run of the same import writes nothing.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from aiogram.fsm.storage.base import StorageKey
from pymongo import InsertOne, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from botyard.database.documents import Document
from botyard.importers.source import Batch, SourceRecord, Unparseable
from botyard.storage import COLLECTION_NAME, KEY_FIELDS, FSMRecord, record_filter, utcnow

#: Set with ``updated_at`` by an import: equal to it while nobody touched the record since.
IMPORTED_AT = "imported_at"
_DUPLICATE_KEY = 11000

# Why a source record was not written.
UNCHANGED = "unchanged (already imported)"
NEWER = "newer in botyard"
EMPTY = "empty (no state, no data)"
OTHER_BOT = "another bot's key"
DUPLICATE = "same key as an earlier source document"


@dataclass
class ImportReport:
    """Counts of one import, and every source document that was not imported for a fault."""

    read: int = 0
    imported: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    unparseable: list[Unparseable] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)


class RecordWriter:
    """Writes one bot's imported records into the botyard database."""

    def __init__(
        self,
        database: AsyncDatabase[Document],
        namespace: str,
        *,
        state_ttl: timedelta | None,
        bot_id: int | None = None,
        overwrite: bool = False,
        dry_run: bool = False,
    ) -> None:
        self.collection: AsyncCollection[Document] = database[COLLECTION_NAME]
        self.namespace = namespace
        self.state_ttl = state_ttl
        #: The bot's id (from its token); keys of another bot id are skipped.
        self.bot_id = bot_id
        self.overwrite = overwrite
        self.dry_run = dry_run
        self.report = ImportReport()
        self._seen: dict[tuple[Any, ...], str] = {}

    async def write(self, batch: Batch) -> None:
        """Classify and write one batch of source records; update :attr:`report`."""
        report = self.report
        report.read += batch.documents
        report.unparseable.extend(batch.unparseable)
        wanted: dict[tuple[Any, ...], SourceRecord] = {}
        for record in batch.records:
            reason = self._reject(record)
            if reason is None:
                wanted[self._identity(record.key)] = record
            else:
                report.skipped[reason] += 1
        if not wanted:
            return
        stored = await self._stored(list(wanted.values()))
        now = utcnow()
        inserts: list[InsertOne[Document]] = []
        updates: list[UpdateOne] = []
        for identity, record in wanted.items():
            existing = stored.get(identity)
            if existing is None:
                inserts.append(InsertOne(self._document(record, now)))
            elif existing.get("state") == record.state and existing.get("data") == record.data:
                report.skipped[UNCHANGED] += 1
            elif self.overwrite or existing.get(IMPORTED_AT) == existing.get("updated_at"):
                updates.append(self._update(record, existing["updated_at"], now))
            else:
                report.skipped[NEWER] += 1
        if self.dry_run:
            report.imported += len(inserts) + len(updates)
        elif inserts or updates:
            await self._bulk_write([*inserts, *updates], len(updates))

    def _reject(self, record: SourceRecord) -> str | None:
        if record.state is None and not record.data:
            return EMPTY  # botyard keeps no empty record: nothing to resume
        if self.bot_id is not None and record.key.bot_id not in (0, self.bot_id):
            return OTHER_BOT
        identity = self._identity(record.key)
        first = self._seen.setdefault(identity, record.source_id)
        if first != record.source_id:
            self.report.duplicates.append(f"{record.source_id} (same key as {first})")
            return DUPLICATE
        return None

    def _identity(self, key: StorageKey) -> tuple[Any, ...]:
        return tuple(record_filter(self.namespace, key).values())

    async def _stored(self, records: list[SourceRecord]) -> dict[tuple[Any, ...], Document]:
        """The botyard records of these keys, by key; one query through the key index.

        Only the index's leading fields are matched (the rest is sorted out here):
        adding ``user_id: {$in: ...}`` makes SecantusDB scan, 30 times slower.
        """
        query = {
            "namespace": self.namespace,
            "chat_id": {"$in": sorted({record.key.chat_id for record in records})},
        }
        projection = {**dict.fromkeys(KEY_FIELDS, 1), "state": 1, "data": 1, "updated_at": 1}
        projection[IMPORTED_AT] = 1
        found: dict[tuple[Any, ...], Document] = {}
        async for document in self.collection.find(query, projection):
            found[tuple(document.get(field) for field in KEY_FIELDS)] = document
        return found

    def _document(self, record: SourceRecord, now: datetime) -> Document:
        """The record as BeanieStorage stores it: validated by the storage's own model."""
        model = FSMRecord.model_validate(
            {
                **record_filter(self.namespace, record.key),
                "bot_id": self._bot_id(record),
                "state": record.state,
                "data": record.data,
                "updated_at": now,
                "expires_at": None if self.state_ttl is None else now + self.state_ttl,
            }
        )
        return {**model.model_dump(exclude={"id", "revision_id"}), IMPORTED_AT: now}

    def _update(self, record: SourceRecord, read_updated_at: datetime, now: datetime) -> UpdateOne:
        fields = self._document(record, now)
        # $literal: data keys with '.' or a leading '$' are stored as they are, as
        # BeanieStorage stores them, not read as paths or operators.
        changes = {name: {"$literal": fields[name]} for name in ("state", "data")}
        for name in ("bot_id", "updated_at", "expires_at", IMPORTED_AT):
            changes[name] = fields[name]
        match = {**record_filter(self.namespace, record.key), "updated_at": read_updated_at}
        return UpdateOne(match, [{"$set": changes}])

    def _bot_id(self, record: SourceRecord) -> int:
        return self.bot_id if self.bot_id is not None else record.key.bot_id

    async def _bulk_write(
        self, operations: list[InsertOne[Document] | UpdateOne], updates: int
    ) -> None:
        """Write; a record botyard created or changed meanwhile counts as newer, not imported."""
        inserts = len(operations) - updates
        try:
            result = await self.collection.bulk_write(operations, ordered=False)
            inserted, modified = result.inserted_count, result.modified_count
        except BulkWriteError as error:
            details = error.details
            if any(item.get("code") != _DUPLICATE_KEY for item in details["writeErrors"]):
                raise
            inserted, modified = details["nInserted"], details["nModified"]
        self.report.imported += inserted + modified
        raced = (inserts - inserted) + (updates - modified)
        if raced:
            self.report.skipped[NEWER] += raced
