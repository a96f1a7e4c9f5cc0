"""The one client factory: botyard's timeouts, what the URI says first, the registry's key."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from botyard.cli.database import registry_database
from botyard.database.client import mongo_client
from botyard.registry.loader import load_registry


async def test_every_client_gets_an_operation_timeout() -> None:
    client = mongo_client("mongodb://127.0.0.1:1/")
    assert client.options.timeout == 10.0
    assert client.options.server_selection_timeout == 5.0
    assert client.options.pool_options.connect_timeout == 5.0
    assert client.options.codec_options.tz_aware
    await client.close()


async def test_a_short_timeout_also_bounds_finding_a_server() -> None:
    client = mongo_client("mongodb://127.0.0.1:1/", timeout=timedelta(seconds=2))
    assert client.options.timeout == 2.0
    assert client.options.server_selection_timeout == 2.0
    assert client.options.pool_options.connect_timeout == 2.0
    await client.close()


async def test_options_in_the_uri_come_before_the_defaults_and_keywords_before_both() -> None:
    uri = "mongodb://u:p@127.0.0.1:1,127.0.0.1:2/db?TIMEOUTMS=1500&serverSelectionTimeoutMS=300"
    client = mongo_client(uri, connectTimeoutMS=700, appname="probe")
    assert client.options.timeout == 1.5
    assert client.options.server_selection_timeout == 0.3
    assert client.options.pool_options.connect_timeout == 0.7
    assert client.options.pool_options.metadata["application"] == {"name": "probe"}
    await client.close()


async def test_a_client_reads_and_writes(mongo_uri: str, database_name: str) -> None:
    client = mongo_client(mongo_uri)
    try:
        collection = client[database_name]["probe"]
        at = datetime(2030, 1, 2, 3, 4, 5, 6000, tzinfo=UTC)
        await collection.insert_one({"_id": 1, "at": at})
        assert await collection.find_one({"_id": 1}) == {"_id": 1, "at": at}
    finally:
        await client.drop_database(database_name)
        await client.close()


@pytest.mark.parametrize(("written", "seconds"), [("", 10.0), ("  timeout: 3s\n", 3.0)])
async def test_the_registry_timeout_reaches_a_command_client(
    tmp_path: Path, mongo_uri: str, database_name: str, written: str, seconds: float
) -> None:
    path = tmp_path / "botyard.yaml"
    path.write_text(
        f"storage:\n  uri: {mongo_uri}\n  database: {database_name}\n{written}"
        + textwrap.dedent(
            """\
            bots:
              - name: quiz
                token: "111111:CCHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
                routers: [bots.quiz:router]
            """
        )
    )
    registry = load_registry(path)
    async with registry_database(registry, "botyard-test") as database:
        assert database.client.options.timeout == seconds
        assert (await database.command("ping"))["ok"] == 1.0
