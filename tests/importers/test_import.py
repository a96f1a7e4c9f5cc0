"""``botyard import``: FSM state from other aiogram storages, on SecantusDB.

Each test builds the old bot's collections itself (with malformed keys, a
document with only state, one with only data, non-ASCII data), runs the command
as an operator would, then reads the result back through ``BeanieStorage``, and
in the end-to-end test through a running questionnaire bot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiogram.fsm.storage.base import StorageKey
from bson import ObjectId
from click.testing import CliRunner, Result
from pymongo import MongoClient

from botyard.cli import main
from botyard.emulator import EmulatorThread
from botyard.storage import COLLECTION_NAME, BeanieStorage

from e2e import QUESTIONS, THANKS, World

BOT_ID = 1000001
TOKEN = f"{BOT_ID}:{'A' * 35}"
NAMESPACE = "questionnaire"
FIELDS = ("state", "data", "updated_at", "expires_at", "bot_id", "imported_at")


class Old:
    """The test's MongoDB: the old bot's database and botyard's, with a registry."""

    def __init__(self, directory: Path, mongo_uri: str, database: str) -> None:
        self.mongo_uri = mongo_uri
        self.database = database
        self.source_database = f"{database}_old"
        self.client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri, tz_aware=True)
        self.source = self.client[self.source_database]
        self.target = self.client[database]
        self.registry = directory / "botyard.yaml"
        self.registry.write_text(
            f"storage:\n  uri: {mongo_uri}\n  database: {database}\n"
            "bots:\n"
            "  - name: questionnaire\n"
            "    token: ${QUESTIONNAIRE_TOKEN}\n"
            "    routers: [bots.questionnaire:router]\n"
            "    state_ttl: 1d\n"
        )

    def run(
        self, fmt: str, *args: str, collection: str | None = "fsm", **env: str | None
    ) -> Result:
        where = ["--collection", collection] if collection else []
        command = ["import", str(self.registry), "--from", fmt, "--uri", self.mongo_uri]
        command += ["--database", self.source_database, *where, "--bot", NAMESPACE, *args]
        return CliRunner().invoke(
            main, command, env={"QUESTIONNAIRE_TOKEN": TOKEN, **env}, catch_exceptions=False
        )

    def snapshot(self) -> dict[str, Any]:
        """Every source collection's documents and indexes."""
        return {
            name: (
                list(self.source[name].find().sort("_id")),
                self.source[name].index_information(),
            )
            for name in self.source.list_collection_names()
        }

    def records(self) -> dict[tuple[int, int, str], dict[str, Any]]:
        return {
            (doc["chat_id"], doc["user_id"], doc["destiny"]): doc
            for doc in self.target[COLLECTION_NAME].find({"namespace": NAMESPACE})
        }


@pytest.fixture
def old(tmp_path: Path, mongo_uri: str, database_name: str) -> Iterator[Old]:
    world = Old(tmp_path, mongo_uri, database_name)
    yield world
    world.client.drop_database(world.source_database)
    world.client.drop_database(database_name)
    world.client.close()


def read_back(old: Old, keys: list[StorageKey]) -> list[tuple[str | None, dict[str, Any]]]:
    """State and data of ``keys`` as the bot's BeanieStorage sees them."""

    async def read() -> list[tuple[str | None, dict[str, Any]]]:
        storage = await BeanieStorage.connect(
            old.mongo_uri, database=old.database, namespace=NAMESPACE
        )
        try:
            return [(await storage.get_state(key), await storage.get_data(key)) for key in keys]
        finally:
            await storage.close()

    return asyncio.run(read())


def key(chat: int, user: int | None = None, **more: Any) -> StorageKey:
    return StorageKey(bot_id=BOT_ID, chat_id=chat, user_id=chat if user is None else user, **more)


def report_lines(result: Result) -> list[str]:
    return result.output.splitlines()


# aiogram 3


AIOGRAM3: list[dict[str, Any]] = [
    {"_id": "fsm:10:10", "state": "Questionnaire:q2", "data": {"q1": "rød 🎨 Grüße"}},
    {"_id": "fsm:11:11", "state": "Questionnaire:q1"},
    {"_id": "fsm:12:12", "data": {"lang": "日本語", "a.b": 1, "nested": {"list": [1, "два"]}}},
    {"_id": "fsm:-100500:7:12", "state": "Questionnaire:q3", "data": {"topic": True}},
    {"_id": "fsm:15:15"},
    {"_id": "fsm:abc:1", "state": "x"},
    {"_id": "fsm:1", "state": "x"},
    {"_id": "other:1:1", "state": "x"},
    {"_id": 42, "state": "x"},
    {"_id": "fsm:13:13", "state": 5},
    {"_id": "fsm:14:14", "data": "not a document"},
]


def test_aiogram3_storage_is_imported_and_read_back_through_beanie_storage(old: Old) -> None:
    old.source["fsm"].insert_many(AIOGRAM3)
    before = old.snapshot()

    result = old.run("aiogram")

    assert result.exit_code == 0, result.output
    lines = report_lines(result)
    assert f"source: aiogram 3 storage {old.mongo_uri} {old.source_database}.fsm" in lines
    assert "target: bot questionnaire (namespace questionnaire, state_ttl 1d)" in lines
    assert "read 11 source document(s)" in lines
    assert "imported 4, skipped 1, unparseable 6" in lines
    assert "skipped: empty (no state, no data) 1" in lines
    unparseable = lines[lines.index("unparseable (not imported; the source is unchanged):") + 1 :]
    assert unparseable == [
        "  42: _id is a int, not an aiogram key string",
        "  fsm:1: expected fsm:<chat_id>:<thread_id?>:<user_id> (do --with-bot-id, "
        "--with-destiny and --with-business-connection-id match the old bot's key builder?)",
        "  fsm:13:13: state is a int, not a string",
        "  fsm:14:14: data is a str, not a document",
        "  fsm:abc:1: chat id 'abc' is not an integer",
        "  other:1:1: does not start with 'fsm:' (see --prefix, --separator)",
    ]
    assert old.snapshot() == before, "the source is never modified"

    assert read_back(
        old, [key(10), key(11), key(12), key(-100500, 12, thread_id=7), key(15), key(13)]
    ) == [
        ("Questionnaire:q2", {"q1": "rød 🎨 Grüße"}),
        ("Questionnaire:q1", {}),
        (None, {"lang": "日本語", "a.b": 1, "nested": {"list": [1, "два"]}}),
        ("Questionnaire:q3", {"topic": True}),
        (None, {}),
        (None, {}),
    ]
    records = old.records()
    assert len(records) == 4
    for record in records.values():
        assert record["bot_id"] == BOT_ID, "the registry bot's id, from its token"
        assert record["expires_at"] - record["updated_at"] == timedelta(days=1)
        assert record["imported_at"] == record["updated_at"]
        assert record["thread_id"] is None or record["chat_id"] == -100500


def test_aiogram3_key_builder_options_match_the_old_bots_keys(old: Old) -> None:
    old.source["fsm"].insert_many(
        [
            {"_id": f"bot|{BOT_ID}|10|10|default", "state": "Questionnaire:q2"},
            {"_id": f"bot|{BOT_ID}|10|10|poll", "data": {"vote": "ja"}},
            {"_id": f"bot|{BOT_ID}|biz1|20|21|default", "state": "Questionnaire:q1"},
            {"_id": "bot|999|10|10|default", "state": "Questionnaire:q3"},
            {"_id": f"bot|{BOT_ID}|10|10", "state": "no destiny"},
        ]
    )
    layout = ["--prefix", "bot", "--separator", "|", "--with-bot-id", "--with-destiny"]
    result = old.run("aiogram", *layout, "--with-business-connection-id")

    assert result.exit_code == 0, result.output
    lines = report_lines(result)
    assert "imported 3, skipped 1, unparseable 1" in lines
    assert "skipped: another bot's key 1" in lines
    assert (
        f"  bot|{BOT_ID}|10|10: expected bot|<bot_id>|<business_connection_id?>|<chat_id>|"
        "<thread_id?>|<user_id>|<destiny>: no destiny after the user id"
    ) in lines
    assert read_back(
        old, [key(10), key(10, destiny="poll"), key(20, 21, business_connection_id="biz1")]
    ) == [("Questionnaire:q2", {}), (None, {"vote": "ja"}), ("Questionnaire:q1", {})]


# aiogram 2


def test_aiogram2_state_and_data_collections_are_joined(old: Old) -> None:
    bad_chat, bad_pair, bad_data = ObjectId(), ObjectId(), ObjectId()
    old.source["aiogram_state"].insert_many(
        [
            {"chat": 20, "user": 20, "state": "Questionnaire:q2"},
            {"chat": 21, "user": 21, "state": "Questionnaire:q1"},
            {"_id": bad_chat, "chat": "x", "user": 1, "state": "Questionnaire:q1"},
            {"_id": bad_pair, "chat": 23, "user": 23, "state": "Questionnaire:q3"},
        ]
    )
    old.source["aiogram_data"].insert_many(
        [
            {"chat": 20, "user": 20, "data": {"q1": "Grüße aus Köln"}},
            {"chat": 22, "user": 22, "data": {"note": "только данные"}},
            {"chat": 23, "user": 23, "data": [1, 2]},
            {"_id": bad_data, "user": 24, "data": {"q1": "lost?"}},
        ]
    )
    before = old.snapshot()

    result = old.run("aiogram2", collection=None)

    assert result.exit_code == 0, result.output
    lines = report_lines(result)
    assert "read 8 source document(s)" in lines
    assert "imported 3, skipped 0, unparseable 3" in lines
    unparseable = lines[lines.index("unparseable (not imported; the source is unchanged):") + 1 :]
    pair_data_id = old.source["aiogram_data"].find_one({"chat": 23})["_id"]  # type: ignore[index]
    assert sorted(unparseable) == sorted(
        [
            f"  aiogram_state/{bad_chat}: chat 'x' is not an integer",
            f"  aiogram_state/{bad_pair}: aiogram_data/{pair_data_id}: "
            "data is a list, not a document",
            f"  aiogram_data/{bad_data}: no chat",
        ]
    )
    assert old.snapshot() == before
    assert read_back(old, [key(20), key(21), key(22), key(23)]) == [
        ("Questionnaire:q2", {"q1": "Grüße aus Köln"}),
        ("Questionnaire:q1", {}),
        (None, {"note": "только данные"}),
        (None, {}),
    ]


# seed


def test_seed_documents_are_imported_and_duplicate_keys_listed(old: Old) -> None:
    first, duplicate, no_chat, bad_user = ObjectId(), ObjectId(), ObjectId(), ObjectId()
    old.source["fsm"].insert_many(
        [
            {
                "_id": first,
                "user_id": "30",
                "chat_id": "30",
                "state": "Questionnaire:q2",
                "data": {"q1": "½ café"},
            },
            {"user_id": "31", "chat_id": "31", "state": "Questionnaire:q1", "data": {}},
            {"user_id": 32, "chat_id": 32, "state": None, "data": {"emoji": "🦊"}},
            {"_id": duplicate, "user_id": "30", "chat_id": "30", "state": "Questionnaire:q3"},
            {"_id": no_chat, "user_id": "33", "state": "Questionnaire:q1"},
            {"_id": bad_user, "user_id": "3x", "chat_id": "34", "state": "Questionnaire:q1"},
        ]
    )
    before = old.snapshot()

    result = old.run("seed")

    assert result.exit_code == 0, result.output
    lines = report_lines(result)
    assert "imported 3, skipped 1, unparseable 2" in lines
    assert "skipped: same key as an earlier source document 1" in lines
    assert f"  {duplicate} (same key as {first})" in lines
    assert f"  {no_chat}: no chat_id" in lines
    assert f"  {bad_user}: user_id '3x' is not an integer" in lines
    assert old.snapshot() == before
    assert read_back(old, [key(30), key(31), key(32)]) == [
        ("Questionnaire:q2", {"q1": "½ café"}),
        ("Questionnaire:q1", {}),
        (None, {"emoji": "🦊"}),
    ]


# idempotence, newer records, dry run


@pytest.mark.parametrize(
    ("fmt", "collection", "documents"),
    [
        ("aiogram", "fsm", AIOGRAM3),
        ("seed", "fsm", [{"user_id": "40", "chat_id": "40", "state": "s", "data": {"k": "v"}}]),
    ],
    ids=["aiogram", "seed"],
)
def test_a_second_import_changes_nothing(
    old: Old, fmt: str, collection: str, documents: list[dict[str, Any]]
) -> None:
    old.source[collection].insert_many(documents)
    first = old.run(fmt)
    assert first.exit_code == 0, first.output
    written = old.records()
    assert written

    second = old.run(fmt)

    assert second.exit_code == 0, second.output
    assert f"imported 0, skipped {len(written) + ('empty' in first.output)}" in second.output
    assert f"unchanged (already imported) {len(written)}" in second.output
    assert old.records() == written, "not even updated_at moved"


def set_state(old: Old, storage_key: StorageKey, state: str) -> None:
    """A botyard write, as the running bot would make it."""

    async def write() -> None:
        storage = await BeanieStorage.connect(
            old.mongo_uri, database=old.database, namespace=NAMESPACE, state_ttl=timedelta(days=1)
        )
        try:
            await storage.set_state(storage_key, state)
        finally:
            await storage.close()

    asyncio.run(write())


def test_records_newer_in_botyard_are_kept_unless_overwrite(old: Old) -> None:
    fsm = old.source["fsm"]
    fsm.insert_many(
        [
            {"_id": "fsm:50:50", "state": "Questionnaire:q1"},
            {"_id": "fsm:51:51", "state": "Questionnaire:q1"},
            {"_id": "fsm:52:52", "state": "Questionnaire:q1"},
        ]
    )
    set_state(old, key(52), "Questionnaire:q3")  # botyard had this user before any import
    assert old.run("aiogram").exit_code == 0
    set_state(old, key(50), "Questionnaire:q2")  # the user talked to botyard since
    # the old bot ran on meanwhile and moved everybody on
    fsm.update_many({}, {"$set": {"state": "Questionnaire:q3", "data": {"old": "bot"}}})

    again = old.run("aiogram")

    assert again.exit_code == 0, again.output
    assert "imported 1, skipped 2, unparseable 0" in again.output
    assert "skipped: newer in botyard 2" in again.output
    assert read_back(old, [key(50), key(51), key(52)]) == [
        ("Questionnaire:q2", {}),  # botyard's, kept
        ("Questionnaire:q3", {"old": "bot"}),  # imported and untouched: refreshed
        ("Questionnaire:q3", {}),  # botyard's own, kept
    ]

    forced = old.run("aiogram", "--overwrite")

    assert "imported 2, skipped 1, unparseable 0" in forced.output
    assert "skipped: unchanged (already imported) 1" in forced.output
    assert read_back(old, [key(50), key(52)]) == [
        ("Questionnaire:q3", {"old": "bot"}),
        ("Questionnaire:q3", {"old": "bot"}),
    ]


def test_dry_run_writes_nothing(old: Old) -> None:
    old.source["fsm"].insert_many(AIOGRAM3)

    result = old.run("aiogram", "--dry-run")

    assert result.exit_code == 0, result.output
    lines = report_lines(result)
    assert "would import 4, skipped 1, unparseable 6" in lines
    assert lines[-1] == "dry run: nothing was written"
    assert old.target.list_collection_names() == [], "no records, not even the indexes"

    assert old.run("aiogram").exit_code == 0
    written = old.records()
    old.source["fsm"].update_one({"_id": "fsm:11:11"}, {"$set": {"state": "Questionnaire:q2"}})
    again = old.run("aiogram", "--dry-run")
    assert "would import 1, skipped 4, unparseable 6" in again.output
    assert old.records() == written


# bad input


@pytest.mark.parametrize(
    ("args", "collection", "message"),
    [
        ([], None, "Invalid value for --collection: --from aiogram needs it"),
        (["--prefix", "x"], "fsm", None),
        (["--bot", "nobody"], "fsm", "no bot named 'nobody' in botyard.yaml (bots: questionnaire)"),
        (["--separator", ""], "fsm", "Invalid value for --separator: must not be empty"),
    ],
    ids=["no-collection", "key-option-for-seed", "unknown-bot", "empty-separator"],
)
def test_bad_options_are_refused_before_anything_is_read(
    old: Old, args: list[str], collection: str | None, message: str | None
) -> None:
    fmt = "seed" if "--prefix" in args else "aiogram"
    result = old.run(fmt, *args, collection=collection)
    assert result.exit_code == 2
    expected = message or "--prefix: only for --from aiogram (aiogram 3 key strings)"
    assert expected in result.output
    assert "Traceback" not in result.output


def test_source_problems_are_one_line_errors(old: Old) -> None:
    old.source["other"].insert_one({"x": 1})
    missing = old.run("seed", collection="nope")
    assert missing.exit_code == 1
    assert (
        f"error: no collection 'nope' in source database '{old.source_database}' "
        "(collections: other)"
    ) in missing.output

    tokenless = old.run("aiogram", "--with-bot-id", QUESTIONNAIRE_TOKEN=None)
    assert tokenless.exit_code == 2
    assert "--with-bot-id: bot questionnaire's token is not set" in tokenless.output
    assert "environment variable QUESTIONNAIRE_TOKEN is not set" in tokenless.output

    command = ["import", str(old.registry), "--from", "seed", "--database", "old"]
    unreachable = CliRunner().invoke(
        main,
        [
            *command,
            "--collection",
            "fsm",
            "--bot",
            NAMESPACE,
            "--uri",
            "mongodb://user:secret@127.0.0.1:1/?serverSelectionTimeoutMS=300",
        ],
        env={"QUESTIONNAIRE_TOKEN": TOKEN},
        catch_exceptions=False,
    )
    assert unreachable.exit_code == 1
    assert "error: " in unreachable.output
    assert "secret" not in unreachable.output
    assert TOKEN not in unreachable.output
    assert "Traceback" not in unreachable.output


# end to end: the example bot resumes imported conversations


@pytest.mark.e2e
def test_the_questionnaire_bot_resumes_imported_conversations(
    tmp_path: Path, bot_api_thread: EmulatorThread, mongo_uri: str, database_name: str
) -> None:
    world = World(tmp_path / "botyard", bot_api_thread, mongo_uri, database_name)
    world.write({"questionnaire": "bots.questionnaire:router"})
    users = {"aiogram": 601, "aiogram2": 602, "seed": 603}
    source = f"{database_name}_old"
    with MongoClient[dict[str, Any]](mongo_uri) as client:
        old = client[source]
        old["fsm3"].insert_one(
            {"_id": "fsm:601:601", "state": "Questionnaire:q2", "data": {"q1": "rød"}}
        )
        old["aiogram_state"].insert_one({"chat": 602, "user": 602, "state": "Questionnaire:q2"})
        old["aiogram_data"].insert_one({"chat": 602, "user": 602, "data": {"q1": "grün"}})
        old["seed"].insert_one(
            {
                "user_id": "603",
                "chat_id": "603",
                "state": "Questionnaire:q3",
                "data": {"q1": "синий", "q2": "猫"},
            }
        )
    collections = {
        "aiogram": ["--collection", "fsm3"],
        "aiogram2": [],
        "seed": ["--collection", "seed"],
    }
    try:
        for fmt, where in collections.items():
            result = CliRunner().invoke(
                main,
                [
                    "import",
                    str(world.path),
                    "--from",
                    fmt,
                    "--uri",
                    mongo_uri,
                    "--database",
                    source,
                    *where,
                    "--bot",
                    "questionnaire",
                ],
                env=world.env(),
                catch_exceptions=False,
            )
            assert result.exit_code == 0, result.output
            assert "imported 1, skipped 0, unparseable 0" in result.output
            assert world.tokens["questionnaire"] not in result.output

        with world.botyard() as botyard:
            world.wait_all_running(botyard, ["questionnaire"])
            world.say("questionnaire", users["aiogram"], "cat")
            world.say("questionnaire", users["aiogram2"], "/start")
            world.say("questionnaire", users["seed"], "soup")
            assert world.reply("questionnaire", users["aiogram"]) == QUESTIONS[2]
            assert world.reply("questionnaire", users["aiogram2"]) == QUESTIONS[1], "resumed"
            assert world.reply("questionnaire", users["seed"]) == THANKS
            world.say("questionnaire", users["aiogram"], "pizza")
            assert world.reply("questionnaire", users["aiogram"]) == THANKS
            assert botyard.stop() == 0

        records = world.records("questionnaire")
        assert set(records) == {602}, "completed questionnaires leave no state"
        assert records[602]["state"] == "Questionnaire:q2"
        assert records[602]["data"] == {"q1": "grün"}
        assert world.answers("questionnaire") == {
            601: [{"q1": "rød", "q2": "cat", "q3": "pizza"}],
            603: [{"q1": "синий", "q2": "猫", "q3": "soup"}],
        }
    finally:
        with MongoClient[dict[str, Any]](mongo_uri) as client:
            client.drop_database(source)
            client.drop_database(database_name)
