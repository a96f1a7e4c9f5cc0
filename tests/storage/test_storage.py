"""BeanieStorage against a real MongoDB-wire-protocol server (SecantusDB or MONGODB_URI)."""

from __future__ import annotations

import asyncio
import contextvars
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from aiogram import Bot, Dispatcher, F, Router
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.filters import CommandStart
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.fsm.storage.base import StorageKey
from aiogram.fsm.storage.memory import DisabledEventIsolation, SimpleEventIsolation
from aiogram.types import Message, Update
from pymongo import AsyncMongoClient
from pymongo.errors import BulkWriteError, OperationFailure

from botyard.database.roundtrips import RoundTripCounter
from botyard.emulator import BotAPIEmulator
from botyard.storage import (
    COLLECTION_NAME,
    BeanieStorage,
    FSMDataError,
    UpdateScopeMiddleware,
    prepare_database,
    update_scope,
)
from botyard.storage.scope import KeyedLocks

from mongo_faults import Faulty, bulk_write_error, duplicate_key

KEY = StorageKey(bot_id=42, chat_id=-100, user_id=7)
OTHER_USER = StorageKey(bot_id=42, chat_id=-100, user_id=8)
TOKEN = "42:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"


class Form(StatesGroup):
    name = State()
    age = State()


@pytest.fixture
async def counter_client(
    mongo_uri: str,
) -> AsyncIterator[tuple[AsyncMongoClient[Any], RoundTripCounter]]:
    counter = RoundTripCounter()
    client: AsyncMongoClient[Any] = AsyncMongoClient(
        mongo_uri, tz_aware=True, event_listeners=[counter]
    )
    try:
        yield client, counter
    finally:
        await client.close()


@pytest.fixture
async def shared(
    counter_client: tuple[AsyncMongoClient[Any], RoundTripCounter], database_name: str
) -> AsyncIterator[BeanieStorage]:
    client, counter = counter_client
    database = client[database_name]
    await prepare_database(database)
    counter.reset()
    yield BeanieStorage(database, "shop", state_ttl=timedelta(hours=1))
    await client.drop_database(database_name)


@pytest.fixture
def counter(counter_client: tuple[AsyncMongoClient[Any], RoundTripCounter]) -> RoundTripCounter:
    return counter_client[1]


async def stored(storage: BeanieStorage, **query: Any) -> list[dict[str, Any]]:
    return [doc async for doc in storage.collection.find({"namespace": storage.namespace, **query})]


# aiogram's storage contract itself: test_contract.py, beside MemoryStorage


async def test_fsm_context_works_with_the_storage(shared: BeanieStorage) -> None:
    context = FSMContext(storage=shared, key=KEY)
    await context.set_state(Form.age)
    await context.update_data(name="Ann")
    assert await context.get_state() == "Form:age"
    assert await context.get_value("name") == "Ann"
    await context.clear()
    assert await stored(shared) == []


# beyond aiogram's contract


async def test_records_carry_key_bot_and_times(shared: BeanieStorage) -> None:
    key = StorageKey(
        bot_id=42, chat_id=1, user_id=2, thread_id=3, business_connection_id="bc", destiny="x"
    )
    before = datetime.now(UTC) - timedelta(seconds=1)
    await shared.set_state(key, "s")
    [document] = await stored(shared)
    assert document["bot_id"] == 42
    assert (document["chat_id"], document["user_id"], document["thread_id"]) == (1, 2, 3)
    assert (document["business_connection_id"], document["destiny"]) == ("bc", "x")
    assert document["updated_at"] >= before
    assert document["expires_at"] - document["updated_at"] == timedelta(hours=1)
    assert document["purge_at"] == document["expires_at"], "no sweep: no grace by default"
    # every key field takes part: a key differing only in destiny is another record
    assert (
        await shared.get_state(
            StorageKey(bot_id=42, chat_id=1, user_id=2, thread_id=3, business_connection_id="bc")
        )
        is None
    )


async def test_never_expiring_storage_writes_no_expiry(shared: BeanieStorage) -> None:
    forever = shared.for_namespace("forever", state_ttl=None)
    await forever.set_state(KEY, "s")
    [document] = await stored(forever)
    assert (document["expires_at"], document["purge_at"]) == (None, None)


async def test_the_ttl_index_deletes_a_grace_after_the_expiry_users_see(
    shared: BeanieStorage,
) -> None:
    """``expires_at`` is last activity + state_ttl; MongoDB's TTL index waits for ``purge_at``."""
    graced = BeanieStorage(
        shared.database, "graced", state_ttl=timedelta(seconds=10), ttl_grace=timedelta(minutes=6)
    )
    await graced.set_state(KEY, "s")
    [document] = await stored(graced)
    assert document["expires_at"] - document["updated_at"] == timedelta(seconds=10)
    assert document["purge_at"] - document["expires_at"] == timedelta(minutes=6)
    assert graced.for_namespace("other").ttl_grace == timedelta(minutes=6)
    indexes = await graced.collection.index_information()
    assert indexes["fsm_purge"] == {"v": 2, "key": [("purge_at", 1)], "expireAfterSeconds": 0}
    assert not any(
        index.get("expireAfterSeconds") is not None and index["key"] == [("expires_at", 1)]
        for index in indexes.values()
    ), "no TTL index on expires_at: it would strike before the sweep"
    with pytest.raises(ValueError, match="ttl_grace"):
        BeanieStorage(shared.database, "x", ttl_grace=timedelta(seconds=-1))


async def test_namespaces_are_isolated(shared: BeanieStorage) -> None:
    other = shared.for_namespace("other")
    await shared.set_state(KEY, "shop-state")
    await shared.set_data(KEY, {"cart": [1]})
    assert await other.get_state(KEY) is None
    assert await other.get_data(KEY) == {}
    await other.set_state(KEY, "other-state")
    await other.set_data(KEY, {})
    assert await shared.get_state(KEY) == "shop-state"
    assert await shared.get_data(KEY) == {"cart": [1]}


async def test_dotted_and_dollar_keys_round_trip(shared: BeanieStorage) -> None:
    data = {"a.b": 1, "$where": "x", "nested": {"c.d": {"$e": [1, {"f.g": None}]}}}
    await shared.set_data(KEY, data)
    assert await shared.get_data(KEY) == data
    merged = await shared.update_data(KEY, {"h.i": 2, "$j": 3})
    assert merged == {**data, "h.i": 2, "$j": 3}
    assert await shared.get_data(KEY) == {**data, "h.i": 2, "$j": 3}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"tags": {1, 2}}, "data['tags'] is a set"),
        ({"price": Decimal("1.5")}, "data['price'] is a Decimal"),
        ({"by_id": {1: "x"}}, "data['by_id'] has the key 1 of type int"),
        ({"big": 2**64}, "data['big'] is an integer outside 64 bits"),
        ({"items": [1, object()]}, "data['items'][1] is a object"),
        ({3: "x"}, "FSM data key 3 is a int"),
    ],
)
async def test_unstorable_values_are_refused_and_nothing_is_lost(
    shared: BeanieStorage, value: dict[Any, Any], message: str
) -> None:
    await shared.set_state(KEY, "kept")
    await shared.set_data(KEY, {"kept": True})
    with pytest.raises(FSMDataError, match=message.replace("[", r"\[").replace("]", r"\]")):
        await shared.set_data(KEY, value)
    with pytest.raises(FSMDataError):
        await shared.update_data(KEY, value)
    assert isinstance(FSMDataError("x"), ValueError)
    assert await shared.get_data(KEY) == {"kept": True}
    assert await shared.get_state(KEY) == "kept"


async def test_concurrent_update_data_on_different_keys_all_survive(shared: BeanieStorage) -> None:
    await asyncio.gather(*(shared.update_data(KEY, {f"k{i}": i}) for i in range(20)))
    assert await shared.get_data(KEY) == {f"k{i}": i for i in range(20)}


async def test_concurrent_updates_in_separate_scopes_all_survive(shared: BeanieStorage) -> None:
    await shared.set_data(KEY, {"start": 0})

    async def one_update(i: int) -> None:
        async with update_scope():
            await shared.get_state(KEY)
            await asyncio.sleep(0.01)  # all scopes read the same old data
            await shared.update_data(KEY, {f"k{i}": i})

    await asyncio.gather(*(one_update(i) for i in range(10)))
    assert await shared.get_data(KEY) == {"start": 0, **{f"k{i}": i for i in range(10)}}


async def test_clear_leaves_no_record(shared: BeanieStorage) -> None:
    await shared.set_state(KEY, "s")
    await shared.set_data(KEY, {"a": 1})
    await shared.set_state(KEY, None)
    assert len(await stored(shared)) == 1  # data still there
    await shared.set_data(KEY, {})
    assert await stored(shared) == []
    # the other order
    await shared.set_data(KEY, {"a": 1})
    await shared.set_state(KEY, "s")
    await shared.set_data(KEY, {})
    await shared.set_state(KEY, None)
    assert await stored(shared) == []


async def test_clearing_one_half_keeps_a_concurrent_write_of_the_other(
    shared: BeanieStorage,
) -> None:
    """A clear must not delete what another writer stored meanwhile (aiogram's race)."""
    await shared.set_data(KEY, {"a": 1})
    async with update_scope():
        assert await shared.get_data(KEY) == {"a": 1}
        await shared.set_data(KEY, {})  # flushed as a conditional delete
        # another update, outside this one's scope, sets a state before the flush
        elsewhere = asyncio.create_task(
            shared.set_state(KEY, "set-meanwhile"), context=contextvars.Context()
        )
        await elsewhere
    assert await shared.get_state(KEY) == "set-meanwhile"
    assert await shared.get_data(KEY) == {}


async def test_closing_a_view_keeps_the_shared_client(shared: BeanieStorage) -> None:
    other = shared.for_namespace("other")
    await other.close()
    await shared.set_state(KEY, "still works")
    assert await shared.get_state(KEY) == "still works"


async def test_connect_owns_and_closes_its_client(mongo_uri: str, database_name: str) -> None:
    storage = await BeanieStorage.connect(mongo_uri, database=database_name, namespace="solo")
    await storage.set_state(KEY, "s")
    indexes = await storage.collection.index_information()
    assert {"fsm_key", "fsm_purge", "fsm_ns_purge", "fsm_ns_updated"} <= set(indexes)
    assert indexes["fsm_key"]["unique"]
    assert indexes["fsm_purge"]["expireAfterSeconds"] == 0
    await storage.database.client.drop_database(database_name)
    await storage.close()
    with pytest.raises(Exception):  # noqa: B017, PT011 - any error: the client is closed
        await storage.get_state(KEY)


async def test_scope_reads_once_and_writes_once(
    shared: BeanieStorage, counter: RoundTripCounter
) -> None:
    async with update_scope():
        assert await shared.get_state(KEY) is None
        await shared.update_data(KEY, {"a": 1})
        assert await shared.get_data(KEY) == {"a": 1}
        await shared.set_state(KEY, "s")
        assert await shared.get_state(KEY) == "s"
        assert counter.total == 1
    assert counter.total == 2
    assert await shared.get_data(KEY) == {"a": 1}


async def test_writes_before_an_exception_are_kept(shared: BeanieStorage) -> None:
    with pytest.raises(RuntimeError):
        async with update_scope():
            await shared.set_state(KEY, "half-way")
            raise RuntimeError("handler failed")
    assert await shared.get_state(KEY) == "half-way"


async def test_task_outliving_its_update_writes_through(shared: BeanieStorage) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def background() -> None:
        started.set()
        await release.wait()
        await shared.set_state(OTHER_USER, "late")

    async with update_scope():
        task = asyncio.create_task(background())
        await started.wait()
    release.set()
    await task
    assert await shared.get_state(OTHER_USER) == "late"


async def test_read_only_activity_refreshes_expiry_at_most_once_per_tenth(
    shared: BeanieStorage, counter: RoundTripCounter
) -> None:
    await shared.set_state(KEY, "s")
    [first] = await stored(shared)
    counter.reset()
    async with update_scope():
        await shared.get_state(KEY)
    assert counter.total == 1  # fresh record: no refresh write
    old = first["updated_at"] - timedelta(minutes=7)  # older than a tenth of the 1 h TTL
    await shared.collection.update_one({"_id": first["_id"]}, {"$set": {"updated_at": old}})
    counter.reset()
    async with update_scope():
        await shared.get_state(KEY)
    assert counter.total == 2
    [refreshed] = await stored(shared)
    assert refreshed["updated_at"] > old
    assert refreshed["expires_at"] - refreshed["updated_at"] == timedelta(hours=1)
    assert refreshed["state"] == "s"


# round trips through a real aiogram Dispatcher


def build_dispatcher(storage: BeanieStorage) -> Dispatcher:
    router = Router()

    @router.message(CommandStart())
    async def start(message: Message, state: FSMContext) -> None:
        await state.set_state(Form.name)

    @router.message(Form.name)
    async def got_name(message: Message, state: FSMContext) -> None:
        await state.update_data(name=message.text)
        await state.set_state(Form.age)

    @router.message(Form.age, F.text == "boom")
    async def fails(message: Message, state: FSMContext) -> None:
        await state.update_data(age="partial")
        raise RuntimeError("handler failed")

    @router.message(Form.age)
    async def got_age(message: Message, state: FSMContext) -> None:
        await state.clear()

    @router.message()
    async def echo(message: Message) -> None:
        pass

    dispatcher = Dispatcher(storage=storage)
    storage.install(dispatcher)
    dispatcher.include_router(router)
    return dispatcher


def message_update(update_id: int, text: str, user_id: int = 7) -> Update:
    return Update.model_validate(
        {
            "update_id": update_id,
            "message": {
                "message_id": update_id,
                "date": 0,
                "chat": {"id": user_id, "type": "private"},
                "from": {"id": user_id, "is_bot": False, "first_name": "U"},
                "text": text,
                "entities": (
                    [{"type": "bot_command", "offset": 0, "length": len(text)}]
                    if text.startswith("/")
                    else []
                ),
            },
        }
    )


async def test_round_trips_per_update_through_a_dispatcher(
    shared: BeanieStorage, counter: RoundTripCounter
) -> None:
    dispatcher = build_dispatcher(shared)
    bot = Bot(TOKEN)

    async def feed(update_id: int, text: str) -> int:
        counter.reset()
        await dispatcher.feed_update(bot, message_update(update_id, text))
        return counter.total

    assert await feed(1, "hello") == 1, "an update with no FSM use: one read"
    assert await feed(2, "/start") == 2, "set_state: one read, one write"
    assert await feed(3, "Ann") == 2, "wizard step (update_data + set_state): one read, one write"
    key = StorageKey(bot_id=42, chat_id=7, user_id=7)
    assert await shared.get_state(key) == Form.age.state
    assert await shared.get_data(key) == {"name": "Ann"}
    assert await feed(4, "33") == 2, "state.clear(): one read, one delete"
    assert await stored(shared) == []
    await bot.session.close()


async def test_writes_of_a_failing_handler_are_stored(shared: BeanieStorage) -> None:
    dispatcher = build_dispatcher(shared)
    bot = Bot(TOKEN)
    await dispatcher.feed_update(bot, message_update(1, "/start"))
    await dispatcher.feed_update(bot, message_update(2, "Ann"))
    with pytest.raises(RuntimeError, match="handler failed"):
        await dispatcher.feed_update(bot, message_update(3, "boom"))
    key = StorageKey(bot_id=42, chat_id=7, user_id=7)
    assert await shared.get_data(key) == {"name": "Ann", "age": "partial"}
    await bot.session.close()


async def test_install_is_idempotent_and_orders_before_fsm(shared: BeanieStorage) -> None:
    dispatcher = build_dispatcher(shared)
    shared.install(dispatcher)
    kinds = [type(m).__name__ for m in dispatcher.update.outer_middleware]
    assert kinds.count("UpdateScopeMiddleware") == 1
    assert kinds.index("UpdateScopeMiddleware") < kinds.index("FSMContextMiddleware")


async def test_collection_name_is_stable(shared: BeanieStorage) -> None:
    assert shared.collection.name == COLLECTION_NAME == "fsm_records"


async def test_storages_on_one_database_share_one_collection_object(shared: BeanieStorage) -> None:
    """10,000 bots made 10,000 PyMongo collection objects of one collection; the storages
    of a database share one, each keeping to its namespace."""
    other = BeanieStorage(shared.database, "cafe")
    elsewhere = BeanieStorage(shared.database.client[f"{shared.database.name}_x"], "shop")
    assert other.collection is shared.collection
    assert elsewhere.collection is not shared.collection
    assert elsewhere.collection.database.name == f"{shared.database.name}_x"
    await shared.set_state(KEY, "in_shop")
    assert await other.get_state(KEY) is None
    assert await shared.get_state(KEY) == "in_shop"


# what MongoDB refuses, refused before anything is written


async def test_data_too_large_for_one_document_is_refused_before_any_write(
    shared: BeanieStorage, counter: RoundTripCounter
) -> None:
    await shared.set_data(KEY, {"kept": True})
    blob = "x" * (20 * 1024 * 1024)
    counter.reset()
    with pytest.raises(FSMDataError, match=r"bot 'shop' \(chat -100, user 7\).*'blob'"):
        await shared.set_data(KEY, {"blob": blob})
    with pytest.raises(FSMDataError, match="'blob'"):
        await shared.update_data(KEY, {"blob": blob})
    assert counter.total == 0
    half = "y" * (9 * 1024 * 1024)
    with pytest.raises(FSMDataError, match=r"would take 18,8.* bytes.*largest key 'second'"):
        async with update_scope():
            await shared.update_data(KEY, {"first": half})
            await shared.update_data(KEY, {"second": half + "z"})  # the merged data is too big
    assert await shared.get_data(KEY) == {"kept": True, "first": half}


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"x": value}
    return value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"deep": nested(1000)}, "data['deep'] nests more than 98 levels deep"),
        ({"deep": nested(99)}, "data['deep'] nests more than 98 levels deep"),
        ({"deep": [[[[]]]] * 2 + [nested(150)]}, "data['deep'] nests more than 98"),
    ],
)
async def test_data_nested_deeper_than_mongodb_allows_is_refused(
    shared: BeanieStorage, value: dict[str, Any], message: str
) -> None:
    with pytest.raises(FSMDataError, match=re.escape(message)):
        await shared.set_data(KEY, value)
    await shared.set_data(KEY, {"deep": nested(98)})  # the deepest MongoDB stores
    assert await shared.get_data(KEY) == {"deep": nested(98)}


async def test_data_containing_itself_is_refused(shared: BeanieStorage) -> None:
    cyclic: dict[str, Any] = {"name": "a"}
    cyclic["self"] = cyclic
    with pytest.raises(FSMDataError, match=re.escape("data['loop']['self'] contains itself")):
        await shared.update_data(KEY, {"loop": cyclic})
    listed: list[Any] = [1]
    listed.append(listed)
    with pytest.raises(FSMDataError, match=re.escape("data['items'][1] contains itself")):
        await shared.set_data(KEY, {"items": listed})
    shared_leaf = {"a": 1}
    await shared.set_data(KEY, {"twice": [shared_leaf, shared_leaf]})  # shared, not a cycle
    assert await shared.get_data(KEY) == {"twice": [{"a": 1}, {"a": 1}]}


# a conversation expires as a whole or survives as a whole


@pytest.mark.parametrize("write", ["set_state", "update_data", "set_data"])
async def test_a_record_swept_while_its_update_runs_is_not_brought_back_half_empty(
    shared: BeanieStorage, counter: RoundTripCounter, write: str
) -> None:
    await shared.set_state(KEY, Form.name)
    await shared.set_data(KEY, {"name": "Ann"})
    counter.reset()
    async with update_scope():
        assert await shared.get_state(KEY) == Form.name.state
        # the cleanup removes the stale record while the handler runs
        await shared.collection.delete_one({"namespace": "shop", "user_id": KEY.user_id})
        if write == "set_state":
            await shared.set_state(KEY, Form.age)
        elif write == "update_data":
            await shared.update_data(KEY, {"age": 33})
        else:
            await shared.set_data(KEY, {"age": 33})
    assert counter.total == 3  # the read, the sweep's delete, the one write: no extra trip
    assert await stored(shared) == [], "expired as a whole"


async def test_an_update_setting_state_and_data_after_a_sweep_starts_afresh(
    shared: BeanieStorage,
) -> None:
    await shared.set_state(KEY, Form.age)
    async with update_scope():
        await shared.get_state(KEY)
        await shared.collection.delete_one({"namespace": "shop", "user_id": KEY.user_id})
        await shared.set_state(KEY, Form.name)
        await shared.set_data(KEY, {"started": True})
    assert await shared.get_state(KEY) == Form.name.state
    assert await shared.get_data(KEY) == {"started": True}


# install() in a plain aiogram bot


async def test_install_keeps_a_plain_aiogram_bot_consistent_under_concurrent_users(
    shared: BeanieStorage, bot_api: BotAPIEmulator
) -> None:
    """aiogram handles each polled update as a task, with no events isolation by default:
    the next message of a user must still see what the previous one stored after replying."""
    token = bot_api.add_bot(username="counter_bot").token
    router = Router()

    @router.message()
    async def count(message: Message, state: FSMContext) -> None:
        seen = (await state.get_data()).get("seen", 0) + 1
        await message.answer(str(seen))  # the reply goes out before the write is stored
        await state.update_data(seen=seen)

    dispatcher = Dispatcher(storage=shared)
    shared.install(dispatcher)
    dispatcher.include_router(router)
    bot = Bot(token, session=AiohttpSession(api=TelegramAPIServer.from_base(bot_api.url)))
    users, messages = range(2001, 2011), 6
    for round_ in range(messages):
        for user in users:
            bot_api.send_message(token, user, f"m{round_}")
    polling = asyncio.create_task(dispatcher.start_polling(bot, handle_signals=False))
    try:
        for user in users:
            replies = await bot_api.wait_for_reply(
                token, user, count=messages, after_message_id=0, timeout=60
            )
            assert isinstance(replies, list)
            assert sorted(int(reply["text"]) for reply in replies) == list(range(1, messages + 1))
    finally:
        await dispatcher.stop_polling()
        await polling
        await bot.session.close()
    for user in users:
        key = StorageKey(bot_id=bot.id, chat_id=user, user_id=user)
        assert await shared.get_data(key) == {"seen": messages}


async def test_install_moves_an_existing_events_isolation_around_the_writes(
    shared: BeanieStorage,
) -> None:
    isolation = SimpleEventIsolation()
    dispatcher = Dispatcher(storage=shared, events_isolation=isolation)
    shared.install(dispatcher)
    [scope] = [
        m for m in dispatcher.update.outer_middleware if isinstance(m, UpdateScopeMiddleware)
    ]
    assert scope._isolation is isolation
    assert isinstance(dispatcher.fsm.events_isolation, DisabledEventIsolation)  # no deadlock
    dispatcher.include_router(Router())
    bot = Bot(TOKEN)
    await asyncio.gather(*(dispatcher.feed_update(bot, message_update(i, "hi")) for i in range(5)))
    assert isolation._locks  # the dispatcher's own isolation did the locking
    await bot.session.close()


async def test_keyed_locks_forget_keys_nobody_holds() -> None:
    locks = KeyedLocks()
    order: list[str] = []

    async def hold(name: str) -> None:
        async with locks.lock(KEY):
            order.append(f"{name} in")
            await asyncio.sleep(0.01)
            order.append(f"{name} out")

    await asyncio.gather(hold("a"), hold("b"))
    assert order == ["a in", "a out", "b in", "b out"]
    assert locks._held == {}


async def test_a_merge_mongodb_finds_too_large_raises_fsm_data_error(
    shared: BeanieStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outside an update, the merge happens in MongoDB: its refusal (which SecantusDB does
    not raise) becomes an FSMDataError naming the bot, the conversation and the keys."""

    async def refuse(*args: Any, **kwargs: Any) -> None:
        raise OperationFailure("Resulting document after update is larger than 16777216", 17419)

    monkeypatch.setattr(shared.collection, "find_one_and_update", refuse)
    with pytest.raises(FSMDataError, match=r"bot 'shop' \(chat -100, user 7\).*'notes'"):
        await shared.update_data(KEY, {"notes": "x" * 1000})


class LosesTheRaceToInsert:
    """The last upsert of the next bulk write collides with a concurrent insert; the rest
    are written, as MongoDB does with an unordered bulk write."""

    def __init__(self, collection: Any) -> None:
        self._collection = collection
        self.raced = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._collection, name)

    async def bulk_write(self, operations: list[Any], **options: Any) -> Any:
        if self.raced:
            return await self._collection.bulk_write(operations, **options)
        self.raced = True
        if operations[:-1]:
            await self._collection.bulk_write(operations[:-1], **options)
        raise bulk_write_error(write_errors=[duplicate_key(index=len(operations) - 1)])


async def test_an_upsert_that_lost_the_race_to_insert_is_sent_again(shared: BeanieStorage) -> None:
    """A duplicate key in a bulk write is a BulkWriteError with code 11000."""
    other = StorageKey(bot_id=42, chat_id=-100, user_id=8)
    racing = LosesTheRaceToInsert(shared.collection)
    shared.collection = racing  # type: ignore[assignment]
    async with update_scope():
        await shared.set_state(other, "second")
        await shared.set_state(KEY, "first")
    assert racing.raced
    assert await shared.get_state(KEY) == "first", "sent again, it updated"
    assert await shared.get_state(other) == "second"


async def test_a_failed_bulk_write_that_is_not_a_lost_race_is_raised(shared: BeanieStorage) -> None:
    failed = bulk_write_error(write_errors=[{"index": 0, "code": 2, "errmsg": "bad value"}])
    shared.collection = Faulty(shared.collection, "bulk_write", failed)  # type: ignore[assignment]
    with pytest.raises(BulkWriteError):
        await shared.set_state(KEY, "first")
