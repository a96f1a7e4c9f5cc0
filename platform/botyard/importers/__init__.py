"""Importing FSM state from other aiogram storages into botyard, one module per format.

- ``aiogram``: aiogram 3's ``MongoStorage``/``PyMongoStorage`` (:mod:`.aiogram3`);
- ``aiogram2``: aiogram 2's contrib ``MongoStorage`` (:mod:`.aiogram2`);
- ``seed``: the hand-written motor storage botyard started from (:mod:`.seed`).

The source is only read. :class:`~.writer.RecordWriter` writes the records in
the shape :class:`~botyard.storage.BeanieStorage` reads.
"""

from __future__ import annotations

from collections.abc import Callable

from botyard.importers.aiogram2 import Aiogram2Source
from botyard.importers.aiogram3 import Aiogram3Source, KeyLayout
from botyard.importers.seed import SeedSource
from botyard.importers.source import ParseError, Source, SourceError, Unparseable
from botyard.importers.writer import ImportReport, RecordWriter

FORMATS = ("aiogram", "aiogram2", "seed")

__all__ = [
    "FORMATS",
    "Aiogram2Source",
    "Aiogram3Source",
    "ImportReport",
    "KeyLayout",
    "ParseError",
    "RecordWriter",
    "SeedSource",
    "Source",
    "SourceError",
    "Unparseable",
    "import_records",
]


async def import_records(
    source: Source,
    writer: RecordWriter,
    *,
    batch_size: int = 500,
    on_batch: Callable[[int], None] | None = None,
) -> ImportReport:
    """Copy every record of ``source`` through ``writer``, batch by batch.

    ``on_batch`` hears how many source documents each batch consumed.
    """
    async for batch in source.batches(batch_size):
        await writer.write(batch)
        if on_batch is not None:
            on_batch(batch.documents)
    return writer.report
