"""What every importer shares: parsed records, reading a source collection in batches.

An importer only reads its source (``find`` and ``count_documents``), never
writes to it. Each source document becomes a :class:`SourceRecord`, or an
:class:`Unparseable` entry naming the document and what is wrong with it.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiogram.fsm.storage.base import StorageKey
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError

from botyard.database.documents import Document
from botyard.errors import BotyardError
from botyard.storage.bson_values import FSMDataError, check_storable
from botyard.tokens import mask_uri


class ParseError(BotyardError, ValueError):
    """A source document that cannot become a botyard record; the message says why."""


class SourceError(BotyardError, RuntimeError):
    """The source database failed (unreachable, no such collection, ...)."""


@dataclass(frozen=True)
class SourceRecord:
    """One conversation read from the source: its aiogram key, state and data."""

    source_id: str
    key: StorageKey
    state: str | None
    data: dict[str, Any]


@dataclass(frozen=True)
class Unparseable:
    """A source document that was not imported, and why."""

    source_id: str
    reason: str


@dataclass
class Batch:
    """What one batch of source documents turned into."""

    #: Source documents this batch consumed (for the progress bar).
    documents: int = 0
    records: list[SourceRecord] = field(default_factory=list)
    unparseable: list[Unparseable] = field(default_factory=list)

    def add(
        self, source_id: str, parse: Callable[[], tuple[StorageKey, str | None, dict[str, Any]]]
    ) -> None:
        """Add what ``parse`` makes of a document, or the reason it could not."""
        try:
            key, state, data = parse()
        except ParseError as error:
            self.unparseable.append(Unparseable(source_id, str(error)))
        else:
            self.records.append(SourceRecord(source_id, key, state, data))


class Source(Protocol):
    """A source format: how many documents it has, and its records batch by batch."""

    def describe(self) -> str:
        """Where the records come from, for the report (no password)."""

    async def count(self) -> int:
        """How many source documents there are (the progress bar's total)."""

    def batches(self, batch_size: int) -> AsyncIterator[Batch]:
        """The source's records, ``batch_size`` source documents at a time."""


def parse_id(value: object, what: str) -> int:
    """A chat or user id stored as an int or a decimal string."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    if value is None:
        raise ParseError(f"no {what}")
    raise ParseError(f"{what} {value!r} is not an integer")


def state_and_data(document: Mapping[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The document's ``state`` (a string or missing) and ``data`` (a document or missing)."""
    state = document.get("state")
    if state is not None and not isinstance(state, str):
        raise ParseError(f"state is a {type(state).__name__}, not a string")
    data = document.get("data")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ParseError(f"data is a {type(data).__name__}, not a document")
    try:
        check_storable(data)
    except FSMDataError as error:
        raise ParseError(str(error)) from None
    return state, data


def source_label(uri: str, database: str, collection: str) -> str:
    """``mongodb://host/ db.collection``, with any password masked."""
    return f"{mask_uri(uri)} {database}.{collection}"


async def read_batches(
    collection: AsyncCollection[Document],
    batch_size: int,
    query: Mapping[str, Any] | None = None,
) -> AsyncIterator[list[Document]]:
    """The documents of ``collection`` in ``_id`` order, ``batch_size`` at a time.

    One cursor over the whole collection, not ``_id > last`` pages: ``$gt`` only
    compares values of one BSON type, so documents whose ``_id`` has another
    type would be skipped without a word.
    """
    cursor = collection.find(query or {}, sort=[("_id", 1)], batch_size=batch_size)
    batch: list[Document] = []
    try:
        async for document in cursor:
            batch.append(document)
            if len(batch) == batch_size:
                yield batch
                batch = []
    except PyMongoError as error:
        raise SourceError(f"reading {collection.full_name}: {error}") from error
    finally:
        await cursor.close()
    if batch:
        yield batch


async def count_documents(collection: AsyncCollection[Document]) -> int:
    """How many documents ``collection`` has; a missing collection is an error, not zero."""
    try:
        names = await collection.database.list_collection_names()
        if collection.name not in names:
            known = ", ".join(sorted(names)) or "none"
            raise SourceError(
                f"no collection {collection.name!r} in source database "
                f"{collection.database.name!r} (collections: {known})"
            )
        return await collection.count_documents({})
    except PyMongoError as error:
        raise SourceError(f"counting {collection.full_name}: {error}") from error


class CollectionSource:
    """A source whose every document is one conversation; subclasses read its key."""

    kind = "storage"

    def __init__(self, collection: AsyncCollection[Document], label: str) -> None:
        self.collection = collection
        self.label = label

    def describe(self) -> str:
        return f"{self.kind} {self.label}"

    def key(self, document: Document) -> StorageKey:
        """The aiogram key of ``document``; :class:`ParseError` if it has none."""
        raise NotImplementedError

    async def count(self) -> int:
        return await count_documents(self.collection)

    async def batches(self, batch_size: int) -> AsyncIterator[Batch]:
        async for documents in read_batches(self.collection, batch_size):
            batch = Batch(documents=len(documents))
            for document in documents:
                batch.add(str(document["_id"]), functools.partial(self._parse, document))
            yield batch

    def _parse(self, document: Document) -> tuple[StorageKey, str | None, dict[str, Any]]:
        return (self.key(document), *state_and_data(document))
