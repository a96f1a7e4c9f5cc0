"""``botyard status``: the replicas as MongoDB knows them, ages on MongoDB's clock."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from pymongo import MongoClient

from botyard.cli import main


def _registry(folder: Path, mongo_uri: str, database: str) -> Path:
    path = folder / "botyard.yaml"
    path.write_text(
        f"storage:\n  uri: {mongo_uri}\n  database: {database}\n"
        "cluster:\n  heartbeat_interval: 1s\n  failover_time: 5s\n"
        "bots:\n  - name: shop\n    token: ${SHOP_TOKEN}\n    routers: [shop:router]\n"
    )
    return path


def test_status_lists_live_and_gone_replicas_with_their_bots(
    tmp_path: Path, mongo_uri: str, database_name: str
) -> None:
    path = _registry(tmp_path, mongo_uri, database_name)
    empty = CliRunner().invoke(main, ["status", str(path)])
    assert empty.exit_code == 0, empty.output
    assert "no replica has joined" in empty.output
    with MongoClient[dict[str, Any]](mongo_uri, tz_aware=True) as client:
        now = client.admin.command("hello")["localTime"]
        database = client[database_name]
        database["botyard_replicas"].insert_many(
            [
                {"_id": "a:1:x", "heartbeat_at": now, "bots": ["shop", "echo"]},
                {"_id": "b:2:y", "heartbeat_at": now - timedelta(minutes=5), "bots": ["quiz"]},
            ]
        )
        database["botyard_leader"].insert_one({"_id": "leader", "holder": "a:1:x"})
        try:
            result = CliRunner().invoke(main, ["status", str(path)])
        finally:
            client.drop_database(database_name)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "1 live replica(s), 1 gone"
    assert lines[1].startswith("a:1:x (leader): heartbeat ")
    assert lines[1].endswith("s ago, serves 2 bot(s)")
    assert lines[2] == "  shop, echo"
    assert lines[3].startswith("b:2:y (gone): heartbeat 30")
    assert lines[4] == "  quiz"


def test_status_without_mongodb_says_so_and_exits_1(tmp_path: Path) -> None:
    path = _registry(tmp_path, "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=300", "x")
    result = CliRunner().invoke(main, ["status", str(path)])
    assert result.exit_code == 1
    assert "error: " in result.output
