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
from dataclasses import dataclass, field, replace
from datetime import timedelta

from pymongo.asynchronous.database import AsyncDatabase

from botyard.database.documents import Document
from botyard.importers.source import Batch, SourceRecord, Unparseable
from botyard.storage import utcnow
from botyard.storage.records import FSMRecords, Identity, ImportedRecord, identity

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
        ttl_grace: timedelta = timedelta(0),
        bot_id: int | None = None,
        overwrite: bool = False,
        dry_run: bool = False,
    ) -> None:
        self.records = FSMRecords(database)
        self.namespace = namespace
        self.state_ttl = state_ttl
        #: ``purge_at - expires_at``, as the running bots' storage writes it.
        self.ttl_grace = ttl_grace
        #: The bot's id (from its token); keys of another bot id are skipped.
        self.bot_id = bot_id
        self.overwrite = overwrite
        self.dry_run = dry_run
        self.report = ImportReport()
        self._seen: dict[Identity, str] = {}

    async def write(self, batch: Batch) -> None:
        """Classify and write one batch of source records; update :attr:`report`."""
        report = self.report
        report.read += batch.documents
        report.unparseable.extend(batch.unparseable)
        wanted: dict[Identity, SourceRecord] = {}
        for record in batch.records:
            reason = self._reject(record)
            if reason is None:
                wanted[identity(self.namespace, record.key)] = record
            else:
                report.skipped[reason] += 1
        if not wanted:
            return
        stored = await self.records.find_for_import(
            self.namespace, [record.key for record in wanted.values()]
        )
        writes: list[ImportedRecord] = []
        for key, record in wanted.items():
            existing = stored.get(key)
            write = ImportedRecord(record.key, self._bot_id(record), record.state, record.data)
            if existing is None:
                writes.append(write)
            elif existing.state == record.state and existing.data == record.data:
                report.skipped[UNCHANGED] += 1
            elif self.overwrite or existing.imported:
                writes.append(replace(write, replaces=existing.updated_at))
            else:
                report.skipped[NEWER] += 1
        if self.dry_run:
            report.imported += len(writes)
        elif writes:
            written = await self.records.write_imported(
                self.namespace,
                writes,
                now=utcnow(),
                state_ttl=self.state_ttl,
                ttl_grace=self.ttl_grace,
            )
            report.imported += written
            if written < len(writes):  # botyard created or changed these meanwhile
                report.skipped[NEWER] += len(writes) - written

    def _reject(self, record: SourceRecord) -> str | None:
        if record.state is None and not record.data:
            return EMPTY  # botyard keeps no empty record: nothing to resume
        if self.bot_id is not None and record.key.bot_id not in (0, self.bot_id):
            return OTHER_BOT
        first = self._seen.setdefault(identity(self.namespace, record.key), record.source_id)
        if first != record.source_id:
            self.report.duplicates.append(f"{record.source_id} (same key as {first})")
            return DUPLICATE
        return None

    def _bot_id(self, record: SourceRecord) -> int:
        return self.bot_id if self.bot_id is not None else record.key.bot_id
