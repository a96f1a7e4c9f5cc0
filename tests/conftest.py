"""Shared fixtures: a real MongoDB-wire-protocol server for the whole session.

With ``MONGODB_URI`` set, tests use that server (a real MongoDB). Otherwise a
SecantusDB child process is started on a free loopback port. Every test gets
its own database name, so tests never see each other's records; on a
``MONGODB_URI`` server, which outlives the session, it is dropped after the test.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from pymongo import AsyncMongoClient, MongoClient

from botyard.database.embedded import SecantusServer
from botyard.runtime.aiogram_models import defer_aiogram_model_builds

# Tests in this process import aiogram as `botyard`'s commands do.
defer_aiogram_model_builds()

# e2e: the ``emulator`` and ``world`` fixtures of the end-to-end tests.
pytest_plugins = ["botyard.emulator.pytest_plugin", "e2e"]


@pytest.fixture(scope="session")
def mongo_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URI of the MongoDB server every test talks to."""
    external = os.environ.get("MONGODB_URI")
    if external:
        yield external
        return
    log = tmp_path_factory.mktemp("secantus") / "secantus.log"
    server = SecantusServer(log_path=log).start()
    try:
        yield server.uri
    finally:
        server.stop()


@pytest.fixture
def database_name() -> Iterator[str]:
    """A database name unique to the test; on a ``MONGODB_URI`` server, dropped after it."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    external = os.environ.get("MONGODB_URI")
    if external:  # that server outlives the session: leave nothing behind on it
        with MongoClient[dict](external) as client:  # type: ignore[type-arg]
            client.drop_database(name)


@pytest.fixture
async def mongo_client(mongo_uri: str) -> AsyncIterator[AsyncMongoClient[dict]]:  # type: ignore[type-arg]
    client: AsyncMongoClient[dict] = AsyncMongoClient(mongo_uri)  # type: ignore[type-arg]
    try:
        yield client
    finally:
        await client.close()
