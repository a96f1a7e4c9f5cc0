"""``botyard migrate``: Beanie migrations from migrations/, on SecantusDB.

The commands run as an operator runs them: through the CLI (in process, or as
subprocesses when two must run at once), against the session's database.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import shutil
import subprocess
import textwrap
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from pymongo import AsyncMongoClient, MongoClient

from botyard.cli import main
from botyard.migrations_runner import (
    LOCK_COLLECTION,
    LockLost,
    MigrationLock,
    find_migrations,
    transaction_support,
)
from botyard.migrations_runner import lock as lock_module
from botyard.migrations_runner.paths import MigrationsNotFound, migration_files
from botyard.storage import COLLECTION_NAME, prepare_database, utcnow

from deployment import DOCKERFILE, Image, assert_parses, parse_dockerfile
from e2e import BOTYARD, REPO, World

MIGRATIONS = REPO / "migrations"
FIRST = "20261125000000_fsm_records.py"
BACKSTOP = "20261125120000_fsm_backstop_after_sweep.py"
#: The repository's migrations, in order.
REPO_MIGRATIONS = [path.name for path in migration_files(MIGRATIONS)]
N = len(REPO_MIGRATIONS)
#: The indexes of fsm_records once every repository migration is applied.
FSM_INDEXES = {"_id_", "fsm_key", "fsm_purge", "fsm_ns_purge", "fsm_ns_updated", "fsm_ns_state"}
BOTS = "bots:\n  - name: questionnaire\n    routers: [bots.questionnaire:router]\n"

#: A data migration that inserts with the session, then fails half-way.
FAILING = """
from beanie import free_fall_migration
from beanie.migrations.database import DBHandler


class Forward:
    @free_fall_migration(document_models=[])
    async def half_done(self, session):
        await DBHandler.get_db()["touched"].insert_one({"step": 1}, session=session)
        raise RuntimeError("boom in the middle")
"""

#: Counts its applications, slowly, so that two concurrent runs overlap.
COUNTING = """
import asyncio

from beanie import free_fall_migration
from beanie.migrations.database import DBHandler


class Forward:
    @free_fall_migration(document_models=[])
    async def count(self, session):
        counters = DBHandler.get_db()["counters"]
        await counters.update_one({"_id": __name__}, {"$inc": {"n": 1}}, upsert=True)
        await asyncio.sleep(1)


class Backward:
    @free_fall_migration(document_models=[])
    async def uncount(self, session):
        counters = DBHandler.get_db()["counters"]
        await counters.update_one({"_id": __name__}, {"$inc": {"n": -1}})
"""


class Setup:
    """A registry in a temporary folder, pointing at the test's database."""

    def __init__(self, directory: Path, mongo_uri: str, database: str) -> None:
        self.directory = directory
        self.mongo_uri = mongo_uri
        self.database = database
        self.registry = directory / "botyard.yaml"
        self.registry.write_text(f"storage:\n  uri: {mongo_uri}\n  database: {database}\n{BOTS}")

    def migrate(self, *args: str, path: Path | None = MIGRATIONS) -> Result:
        command, *options = args
        extra = ["--path", str(path)] if path is not None else []
        return CliRunner().invoke(
            main, ["migrate", str(self.registry), command, *options, *extra], catch_exceptions=False
        )

    def db(self) -> Any:
        client: MongoClient[dict[str, Any]] = MongoClient(self.mongo_uri, tz_aware=True)
        return client, client[self.database]

    def indexes(self) -> dict[str, Any]:
        client, db = self.db()
        with client:
            return dict(db[COLLECTION_NAME].index_information())

    def folder(self, **files: str) -> Path:
        """A migrations folder with the repository's migrations and ``files`` after them."""
        folder = self.directory / "migrations"
        shutil.copytree(MIGRATIONS, folder, ignore=shutil.ignore_patterns("__pycache__"))
        for name, text in files.items():
            (folder / f"{name}.py").write_text(textwrap.dedent(text))
        return folder


@pytest.fixture
def setup(tmp_path: Path, mongo_uri: str, database_name: str) -> Iterator[Setup]:
    yield Setup(tmp_path, mongo_uri, database_name)
    with MongoClient[dict[str, Any]](mongo_uri) as client:
        client.drop_database(database_name)


def lines(result: Result) -> list[str]:
    return result.output.splitlines()


def test_up_status_down_round_trip(setup: Setup) -> None:
    status = setup.migrate("status")
    assert status.exit_code == 0, status.output
    assert f"pending  {FIRST}" in lines(status)
    assert f"0 applied, {N} pending" in status.output
    client, db = setup.db()
    with client:
        assert db.list_collection_names() == [], "status writes nothing"

    up = setup.migrate("up")
    assert up.exit_code == 0, up.output
    assert f"migrations: {MIGRATIONS} (database {setup.database})" in up.output
    assert "transactions: on (the server is a member of replica set" in up.output
    assert any(line.startswith(f"applied {FIRST} in ") for line in lines(up))
    assert f"{N} migration(s) applied; the database is up to date" in up.output
    assert set(setup.indexes()) == FSM_INDEXES
    client, db = setup.db()
    with client:  # built here, not by `botyard run`, whose user may not build indexes
        journal = db["webhook_updates"].index_information()
    assert journal["bot_owner"]["key"] == [("bot", 1), ("owner", 1)]

    status = setup.migrate("status")
    assert any(re.match(rf"applied  {FIRST} +20", line) for line in lines(status)), status.output
    assert f"{N} applied, 0 pending" in status.output
    again = setup.migrate("up")
    assert "nothing to apply: the database is up to date" in again.output

    client, db = setup.db()
    with client:
        db[COLLECTION_NAME].insert_one({"namespace": "questionnaire", "chat_id": 1, "user_id": 1})
    down = setup.migrate("down", "--steps", str(N))
    assert down.exit_code == 0, down.output
    assert any(line.startswith(f"rolled back {FIRST} in ") for line in lines(down))
    assert setup.indexes() == {"_id_": {"v": 2, "key": [("_id", 1)]}}
    client, db = setup.db()
    with client:
        assert db[COLLECTION_NAME].count_documents({}) == 1, "rolling back keeps the records"
    assert f"0 applied, {N} pending" in setup.migrate("status").output
    assert "nothing to roll back" in setup.migrate("down").output

    assert setup.migrate("up").exit_code == 0
    assert "fsm_key" in setup.indexes()


def test_migrated_indexes_are_exactly_the_ones_the_storage_declares(
    setup: Setup, mongo_uri: str
) -> None:
    """The last migration's schema is FSMRecord's: a model change needs a migration."""
    assert setup.migrate("up").exit_code == 0
    by_model = f"{setup.database}_model"

    async def model_indexes() -> dict[str, Any]:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri)
        try:
            await prepare_database(client[by_model])
            return dict(await client[by_model][COLLECTION_NAME].index_information())
        finally:
            await client.drop_database(by_model)
            await client.close()

    assert setup.indexes() == asyncio.run(model_indexes())


def test_existing_records_get_a_backstop_after_their_expiry_in_batches_without_a_transaction(
    setup: Setup,
) -> None:
    """The TTL index moves from expires_at to purge_at = expires_at + 2 days, record by record."""
    assert setup.migrate("up", "--steps", str(REPO_MIGRATIONS.index(BACKSTOP))).exit_code == 0
    assert "fsm_ttl" in setup.indexes(), "the old schema: the TTL index on expires_at"
    now = utcnow()
    client, db = setup.db()
    with client:
        db[COLLECTION_NAME].insert_many(
            [
                {
                    "namespace": "q",
                    "chat_id": chat,
                    "expires_at": now + timedelta(minutes=chat + 10),
                }
                for chat in range(1100)  # two batches of 1,000
            ]
            + [{"namespace": "q", "chat_id": -1, "expires_at": None}]
        )
    up = setup.migrate("up", "--steps", "1")
    assert up.exit_code == 0, up.output
    assert f"applied {BACKSTOP} in " in up.output
    assert "(it runs without a transaction)" in up.output
    indexes = setup.indexes()
    assert {"fsm_ttl", "fsm_ns_expires"}.isdisjoint(indexes)
    assert indexes["fsm_purge"]["expireAfterSeconds"] == 0
    assert indexes["fsm_purge"]["key"] == [("purge_at", 1)]
    client, db = setup.db()
    with client:
        records = {doc["chat_id"]: doc for doc in db[COLLECTION_NAME].find()}
    assert len(records) == 1101
    assert "purge_at" not in records[-1], "a record that never expires gets no backstop"
    for chat in range(1100):
        assert records[chat]["purge_at"] == records[chat]["expires_at"] + timedelta(days=2)

    down = setup.migrate("down")
    assert down.exit_code == 0, down.output
    assert {"fsm_ttl", "fsm_ns_expires"} <= set(setup.indexes())
    client, db = setup.db()
    with client:
        assert db[COLLECTION_NAME].count_documents({"purge_at": {"$exists": True}}) == 0
        db[COLLECTION_NAME].update_one(
            {"chat_id": 7}, {"$set": {"purge_at": now + timedelta(days=1)}}
        )
    assert setup.migrate("up", "--steps", "1").exit_code == 0
    client, db = setup.db()
    with client:
        kept = db[COLLECTION_NAME].find_one({"chat_id": 7})
    assert kept is not None
    assert kept["purge_at"] == now + timedelta(days=1), (
        "run again, it leaves records that have a backstop alone"
    )


def test_steps_apply_and_roll_back_that_many(setup: Setup) -> None:
    folder = setup.folder(
        **{"20261201000000_count_a": COUNTING, "20261202000000_count_b": COUNTING}
    )
    up = setup.migrate("up", "--steps", "2", path=folder)
    assert up.exit_code == 0, up.output
    assert "2 migration(s) applied" in up.output
    up = setup.migrate("up", "--steps", str(N - 1), path=folder)
    assert up.exit_code == 0, up.output
    status = lines(setup.migrate("status", path=folder))
    assert "pending  20261202000000_count_b.py" in status
    assert f"{N + 1} applied, 1 pending" in status
    assert setup.migrate("up", path=folder).output.count("applied 2026") == 1
    down = setup.migrate("down", "--steps", "2", path=folder)
    assert [line.split(" in ")[0] for line in lines(down) if line.startswith("rolled back")] == [
        "rolled back 20261202000000_count_b.py",
        "rolled back 20261201000000_count_a.py",
    ]
    client, db = setup.db()
    with client:
        assert {doc["_id"]: doc["n"] for doc in db["counters"].find()} == {
            "20261201000000_count_a": 0,
            "20261202000000_count_b": 0,
        }
    assert f"{N} applied, 2 pending" in setup.migrate("status", path=folder).output
    bad = setup.migrate("down", "--steps", "0", path=folder)
    assert bad.exit_code == 2
    assert "0 is not in the range x>=1" in bad.output


def test_a_failing_migration_is_rolled_back_in_its_transaction(setup: Setup) -> None:
    folder = setup.folder(**{"20261201000000_fails": FAILING})
    result = setup.migrate("up", path=folder)
    assert result.exit_code == 1
    assert "transactions: on" in result.output
    assert (
        "error: migration 20261201000000_fails.py failed (RuntimeError: boom in the middle); "
        "its transaction was rolled back, and it is still pending"
    ) in result.output
    assert "Traceback" not in result.output.split("error: migration")[1]
    client, db = setup.db()
    with client:
        assert db["touched"].count_documents({}) == 0, "the insert was rolled back"
        assert db[LOCK_COLLECTION].count_documents({}) == 0, "the lock was released"
    status = lines(setup.migrate("status", path=folder))
    assert "pending  20261201000000_fails.py" in status
    assert f"{N} applied, 1 pending" in status


def test_without_transactions_a_failing_migration_leaves_its_writes_and_says_so(
    setup: Setup,
) -> None:
    folder = setup.folder(**{"20261201000000_fails": FAILING})
    result = setup.migrate("up", "--no-transaction", path=folder)
    assert result.exit_code == 1
    assert "transactions: off (--no-transaction was given)" in result.output
    assert "it ran without a transaction, so what it did before failing stays" in result.output
    client, db = setup.db()
    with client:
        assert db["touched"].count_documents({}) == 1


def test_a_migration_declaring_use_transaction_false_runs_without_one_on_a_replica_set(
    setup: Setup,
) -> None:
    """MongoDB aborts a transaction after 60 s: a data migration over every record opts out."""
    declared = FAILING.replace("class Forward:\n", "class Forward:\n    use_transaction = False\n")
    folder = setup.folder(**{"20261201000000_fails": declared})
    result = setup.migrate("up", path=folder)
    assert result.exit_code == 1
    assert "transactions: on" in result.output
    assert f"applied {BACKSTOP} in " in result.output
    assert "(it runs without a transaction)" in result.output.split(BACKSTOP)[1].splitlines()[0]
    assert "it ran without a transaction, so what it did before failing stays" in result.output
    client, db = setup.db()
    with client:
        assert db["touched"].count_documents({}) == 1, "no transaction rolled the insert back"


@pytest.mark.parametrize(
    ("hello", "supported", "reason"),
    [
        (
            {"setName": "rs0", "logicalSessionTimeoutMinutes": 30, "maxWireVersion": 25},
            True,
            "the server is a member of replica set 'rs0'",
        ),
        (
            {"msg": "isdbgrid", "logicalSessionTimeoutMinutes": 30, "maxWireVersion": 25},
            True,
            "the server is a sharded cluster (mongos)",
        ),
        (
            {"isWritablePrimary": True, "logicalSessionTimeoutMinutes": 30, "maxWireVersion": 25},
            False,
            "the server is a standalone mongod, which has no transactions",
        ),
        (
            {"setName": "old", "maxWireVersion": 6},
            False,
            "replica set 'old' is older than MongoDB 4.0",
        ),
    ],
    ids=["replica-set", "mongos", "standalone", "old-replica-set"],
)
def test_transaction_support_is_read_from_the_hello_reply(
    hello: dict[str, Any], supported: bool, reason: str
) -> None:
    verdict = transaction_support(hello)
    assert verdict.supported is supported
    assert verdict.reason.startswith(reason)


def test_secantusdb_reports_a_replica_set_so_migrations_use_transactions(mongo_uri: str) -> None:
    with MongoClient[dict[str, Any]](mongo_uri) as client:
        verdict = transaction_support(client.admin.command("hello"))
    assert verdict.supported, verdict.reason


def run_up(setup: Setup, folder: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*BOTYARD, "migrate", str(setup.registry), "up", "--path", str(folder), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_two_concurrent_ups_apply_each_migration_once(setup: Setup) -> None:
    folder = setup.folder(
        **{"20261201000000_count_a": COUNTING, "20261202000000_count_b": COUNTING}
    )
    runs = [run_up(setup, folder) for _ in range(2)]
    outputs = [run.communicate(timeout=120)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    client, db = setup.db()
    with client:
        counts = {doc["_id"]: doc["n"] for doc in db["counters"].find()}
        logged = [entry["name"] for entry in db["migrations_log"].find()]
    assert counts == {"20261201000000_count_a": 1, "20261202000000_count_b": 1}
    assert sorted(logged) == [
        *REPO_MIGRATIONS,
        "20261201000000_count_a.py",
        "20261202000000_count_b.py",
    ]
    applied = [line for output in outputs for line in output.splitlines()]
    assert len([line for line in applied if line.startswith("applied ")]) == N + 2


def hold_lock(setup: Setup, owner: str, expires_in: timedelta) -> None:
    client, db = setup.db()
    now = utcnow()
    with client:
        db[LOCK_COLLECTION].insert_one(
            {"_id": "migrate", "owner": owner, "acquired_at": now, "expires_at": now + expires_in}
        )


def test_up_waits_for_a_held_lock_and_applies_after_its_release(setup: Setup) -> None:
    hold_lock(setup, "deploy-host:4242:abcd", timedelta(minutes=5))
    run = run_up(setup, MIGRATIONS)
    assert run.stdout is not None
    waiting = ""
    while "waiting" not in waiting:
        line = run.stdout.readline()
        assert line, "exited without waiting for the lock"
        waiting = line
    assert waiting.startswith("waiting for the migration lock held by deploy-host:4242:abcd (since")
    assert setup.indexes() == {}, "nothing is applied while another run holds the lock"
    client, db = setup.db()
    with client:
        db[LOCK_COLLECTION].delete_one({"_id": "migrate"})
    rest = run.communicate(timeout=120)[0]
    assert run.returncode == 0, rest
    assert f"applied {FIRST}" in rest
    assert "fsm_key" in setup.indexes()


async def test_a_run_that_lost_its_lock_stops_before_the_next_migration(
    mongo_client: AsyncMongoClient[dict[str, Any]], database_name: str
) -> None:
    database = mongo_client[database_name]
    lock = MigrationLock(database, owner="slow:1:aa", ttl=timedelta(seconds=30))
    other = MigrationLock(database, owner="fast:2:bb")
    try:
        assert await lock.try_acquire() is None
        holder = await other.try_acquire()
        assert holder is not None
        assert holder.owner == "slow:1:aa"
        assert await lock.renew()
        lock.check()  # still ours: carry on
        # the holder stalled past its expiry and another run took the lock over
        await database[LOCK_COLLECTION].update_one(
            {"_id": "migrate"}, {"$set": {"expires_at": utcnow() - timedelta(seconds=1)}}
        )
        assert await other.try_acquire() is None
        assert not await lock.renew()
        with pytest.raises(LockLost, match="stopped before the next migration"):
            lock.check()
        await lock.release()  # not ours any more: left alone
        assert (await database[LOCK_COLLECTION].find_one())["owner"] == "fast:2:bb"  # type: ignore[index]
    finally:
        await mongo_client.drop_database(database_name)


async def test_the_lock_expires_by_the_servers_clock_not_the_hosts(
    setup: Setup, mongo_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run on a host whose clock is an hour behind holds the lock all the same."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    try:
        database = client[setup.database]
        behind = MigrationLock(database, owner="slow-clock-host:1:behind")
        late = utcnow() - timedelta(hours=1)
        monkeypatch.setattr(lock_module, "utcnow", lambda: late, raising=False)
        assert await behind.try_acquire() is None, "acquired"
        monkeypatch.undo()
        holder = await MigrationLock(database, owner="other-host:2:waiting").try_acquire()
        assert holder is not None, "a lock renewed a moment ago is not taken over"
        assert holder.owner == behind.owner
        assert holder.expires_at > utcnow() + timedelta(seconds=30)
    finally:
        await client.close()


def test_up_gives_up_on_a_held_lock_after_the_timeout(setup: Setup) -> None:
    hold_lock(setup, "other:1:ff", timedelta(minutes=5))
    result = setup.migrate("up", "--lock-timeout", "0.5")
    assert result.exit_code == 1
    assert "error: another migration run holds the lock: other:1:ff (since" in result.output
    assert "gave up after 0.5s" in result.output
    assert setup.indexes() == {}


def test_an_expired_lock_of_a_killed_run_is_taken_over(setup: Setup) -> None:
    hold_lock(setup, "killed:1:00", timedelta(seconds=-1))
    result = setup.migrate("up", "--lock-timeout", "0")
    assert result.exit_code == 0, result.output
    assert "waiting" not in result.output
    client, db = setup.db()
    with client:
        assert db[LOCK_COLLECTION].count_documents({}) == 0


def test_a_database_ahead_of_the_folder_is_refused(setup: Setup) -> None:
    client, db = setup.db()
    with client:
        db["migrations_log"].insert_one(
            {"name": "20991231000000_from_the_future.py", "is_current": True, "ts": utcnow()}
        )
    for command in ("status", "up"):
        result = setup.migrate(command)
        assert result.exit_code == 1
        assert (
            "error: the database is at migration 20991231000000_from_the_future.py, "
            f"which is not in {MIGRATIONS}"
        ) in result.output
    assert setup.indexes() == {}


def test_a_file_that_is_not_a_migration_is_refused(setup: Setup) -> None:
    folder = setup.folder(**{"20261201000000_helper": "VALUE = 1\n"})
    result = setup.migrate("up", path=folder)
    assert result.exit_code == 1
    assert "20261201000000_helper.py is not a Beanie migration" in result.output
    assert setup.indexes() == {}


# Finding the folder


def test_the_folder_is_found_beside_the_registry_or_one_up_as_in_the_image(
    tmp_path: Path,
) -> None:
    checkout = tmp_path / "checkout"
    shutil.copytree(MIGRATIONS, checkout / "migrations")
    (checkout / "deploy").mkdir()
    assert find_migrations(checkout / "botyard.yaml") == checkout / "migrations"
    assert find_migrations(checkout / "deploy" / "botyard.yaml") == checkout / "migrations"

    app = tmp_path / "app"  # the Dockerfile's /app/migrations, compose's /app/config
    shutil.copytree(MIGRATIONS, app / "migrations")
    (app / "config").mkdir()
    assert find_migrations(app / "config" / "botyard.yaml") == app / "migrations"

    explicit = tmp_path / "elsewhere"
    shutil.copytree(MIGRATIONS, explicit)
    assert find_migrations(app / "config" / "botyard.yaml", explicit) == explicit

    lonely = tmp_path / "a" / "b"
    lonely.mkdir(parents=True)
    with pytest.raises(MigrationsNotFound, match=r"no migrations folder at .*a/b/migrations or"):
        find_migrations(lonely / "botyard.yaml")
    (lonely / "migrations").mkdir()
    with pytest.raises(MigrationsNotFound, match=r"holds no migrations"):
        find_migrations(lonely / "botyard.yaml")


def test_the_image_layout_migrates_without_path(setup: Setup) -> None:
    app = setup.directory / "app"
    shutil.copytree(MIGRATIONS, app / "migrations")
    (app / "config").mkdir()
    registry = app / "config" / "botyard.yaml"
    shutil.move(setup.registry, registry)
    setup.registry = registry
    result = setup.migrate("up", path=None)
    assert result.exit_code == 0, result.output
    assert f"migrations: {app / 'migrations'}" in result.output
    assert "fsm_key" in setup.indexes()


def test_bad_input_gets_one_line_and_status_1(setup: Setup, tmp_path: Path) -> None:
    missing = setup.migrate("status", path=tmp_path / "nope")
    assert missing.exit_code == 1
    assert missing.output.strip() == f"error: --path {tmp_path / 'nope'}: no such folder"

    setup.registry.write_text(
        "storage:\n  uri: mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=300\n"
    )
    broken = setup.migrate("status")
    assert broken.exit_code == 1
    assert broken.output.startswith("error: invalid registry")

    setup.registry.write_text(
        f"storage:\n  uri: mongodb://user:secret@127.0.0.1:1/?serverSelectionTimeoutMS=300\n{BOTS}"
    )
    unreachable = setup.migrate("up")
    assert unreachable.exit_code == 1
    assert "error: database mongodb://user:***@127.0.0.1:1/" in unreachable.output
    assert "secret" not in unreachable.output
    assert "Traceback" not in unreachable.output


def test_an_empty_storage_uri_migrates_the_embedded_store(tmp_path: Path) -> None:
    registry = tmp_path / "botyard.yaml"
    registry.write_text(f"storage:\n  uri: \n{BOTS}")
    runner = CliRunner()
    args = ["migrate", str(registry)]
    path = ["--path", str(MIGRATIONS)]
    up = runner.invoke(main, [*args, "up", *path], catch_exceptions=False)
    assert up.exit_code == 0, up.output
    assert f"applied {FIRST}" in up.output
    assert (tmp_path / ".botyard" / "data").is_dir()
    status = runner.invoke(main, [*args, "status", *path], catch_exceptions=False)
    assert f"{N} applied, 0 pending" in status.output, "the same embedded data, reopened"


def test_every_command_the_readme_shows_parses() -> None:
    """The README's section shows each command and option as the CLI takes them."""
    section = (REPO / "README.md").read_text().split("## Migrations and importing state", 1)[1]
    section = section.split("\n## ", 1)[0]
    shown = [
        shlex.split(line, comments=True)
        for block in re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
        for line in block.splitlines()
        if line.startswith("botyard ")
    ]
    assert {words[1] for words in shown} == {"migrate", "import"}
    assert {"status", "up", "down", "--steps", "--path"} <= {w for ws in shown for w in ws}
    formats = {words[words.index("--from") + 1] for words in shown if "--from" in words}
    assert formats == {"aiogram", "aiogram2", "seed"}
    for words in shown:
        assert_parses(words[1:])


@pytest.mark.slow
@pytest.mark.timeout(900)  # builds the image's wheels from the lock, then migrates
def test_the_installed_image_migrates_from_app_migrations(
    tmp_path: Path, mongo_uri: str, database_name: str
) -> None:
    """The Dockerfile's install, compose's command: /app/migrations is found, no --path."""
    dockerfile = parse_dockerfile(DOCKERFILE.read_text())
    image = Image(tmp_path)
    image.build(dockerfile)
    config = tmp_path / "app" / "config"
    config.mkdir()
    deploy = (REPO / "deploy" / "botyard.yaml").read_text()
    (config / "botyard.yaml").write_text(
        deploy.replace("database: botyard", f"database: {database_name}")
    )
    try:
        up = image.entrypoint(
            dockerfile, "migrate", "/app/config/botyard.yaml", "up", MONGODB_URI=mongo_uri
        )
        assert f"migrations: {tmp_path / 'app' / 'migrations'} (database {database_name})" in up
        assert f"applied {FIRST}" in up
        status = image.entrypoint(
            dockerfile, "migrate", "/app/config/botyard.yaml", "status", MONGODB_URI=mongo_uri
        )
        assert f"{N} applied, 0 pending" in status
    finally:
        with MongoClient[dict[str, Any]](mongo_uri) as client:
            client.drop_database(database_name)


@pytest.mark.e2e
def test_botyard_run_warns_with_the_command_while_migrations_are_pending(world: World) -> None:
    """Outside compose nobody runs the migrations for you: `botyard run` says what to run."""
    shutil.copytree(MIGRATIONS, world.directory / "migrations")
    world.write({"echo": "bots.echo:router"})
    with world.botyard() as first:
        line = first.wait_for_log(r"schema migration\(s\) not applied", timeout=120)
        assert f"{N} schema migration(s) not applied to database {world.database_name}" in line
        assert f"run `botyard migrate {world.path} up`" in line
        world.wait_all_running(first, ["echo"])
        assert first.stop() == 0
    up = CliRunner(env=world.env()).invoke(main, ["migrate", str(world.path), "up"])
    assert up.exit_code == 0, up.output
    with world.botyard() as second:
        world.wait_all_running(second, ["echo"])
        assert second.stop() == 0
        assert "not applied" not in second.output
