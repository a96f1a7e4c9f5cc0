"""Commands' access to the registry's database, as ``botyard run`` has it.

The embedded store when ``storage.uri`` is empty (only while no ``botyard run``
uses it), a client of the command's own, and database errors turned into one
:class:`~botyard.errors.BotyardError` naming the database (its password masked).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from botyard.database.client import mongo_client
from botyard.database.documents import Document
from botyard.database.location import open_store
from botyard.errors import BotyardError
from botyard.registry.models import Registry
from botyard.tokens import mask_uri

T = TypeVar("T")


@contextlib.asynccontextmanager
async def registry_database(
    registry: Registry, appname: str
) -> AsyncIterator[AsyncDatabase[Document]]:
    """The registry's database on a client of its own; nothing is created in it."""
    async with open_store(registry) as uri:
        client = mongo_client(uri, timeout=registry.storage.timeout, appname=appname)
        try:
            yield client[registry.storage.database]
        finally:
            await client.close()


def run_on_database(
    registry: Registry,
    action: Callable[[AsyncDatabase[Document]], Awaitable[T]],
    *,
    appname: str,
) -> T:
    """Run ``action`` on the registry's database; a database error becomes a
    :class:`~botyard.errors.BotyardError` naming the database."""

    async def main() -> T:
        async with registry_database(registry, appname) as database:
            return await action(database)

    try:
        return asyncio.run(main())
    except PyMongoError as error:
        where = mask_uri(registry.storage.uri) if registry.storage.uri else "the embedded store"
        raise BotyardError(f"database {where}: {error}") from None
