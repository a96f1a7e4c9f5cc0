"""aiogram's storage contract, run against BeanieStorage and aiogram's own MemoryStorage.

The contract tests follow aiogram's ``tests/test_fsm/storage/test_storages.py``
and extend it (clear, isolation, strategy keys, copies, odd keys). Each runs
on three storages: ``memory`` (the reference), ``beanie`` (every call straight
to MongoDB) and ``beanie-in-one-update`` (the whole test inside one
:func:`update_scope`, as a handler sees it: reads answered from the update's
own writes, written once at the end). Each test reads its results again after
the update, so what was written is checked too, not only what was buffered.

Where BeanieStorage differs on purpose, the last tests show both behaviours
side by side; the README's "Using BeanieStorage" section says why.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any, TypedDict

import pytest
from aiogram.exceptions import DataNotDictLikeError
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.fsm.storage.base import BaseStorage, StorageKey
from aiogram.fsm.storage.memory import MemoryStorage
from aiogram.fsm.strategy import FSMStrategy, apply_strategy
from pymongo.asynchronous.database import AsyncDatabase

from botyard.database.client import mongo_client
from botyard.database.documents import Document
from botyard.storage import BeanieStorage, FSMDataError, prepare_database, update_scope

KEY = StorageKey(bot_id=42, chat_id=-100, user_id=7)
Update = Callable[[], contextlib.AbstractAsyncContextManager[Any]]


class Form(StatesGroup):
    name = State()


@contextlib.asynccontextmanager
async def fresh_database(mongo_uri: str, name: str) -> AsyncIterator[AsyncDatabase[Document]]:
    client = mongo_client(mongo_uri)
    database = client[name]
    await prepare_database(database)
    try:
        yield database
    finally:
        await client.drop_database(name)
        await client.close()


@pytest.fixture
async def database(mongo_uri: str, database_name: str) -> AsyncIterator[AsyncDatabase[Document]]:
    async with fresh_database(mongo_uri, database_name) as database:
        yield database


@pytest.fixture(params=["memory", "beanie", "beanie-in-one-update"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def storage(kind: str, mongo_uri: str, database_name: str) -> AsyncIterator[BaseStorage]:
    if kind == "memory":
        yield MemoryStorage()
        return
    async with fresh_database(mongo_uri, database_name) as database:
        yield BeanieStorage(database, "contract", state_ttl=timedelta(hours=1))


@pytest.fixture
def update(kind: str) -> Update:
    """The test's update: one :func:`update_scope` for ``beanie-in-one-update``."""
    return update_scope if kind == "beanie-in-one-update" else contextlib.nullcontext


def other_bot(storage: BaseStorage, key: StorageKey) -> tuple[BaseStorage, StorageKey]:
    """Another bot's storage and key: MemoryStorage tells bots by id, BeanieStorage by namespace."""
    other_key = StorageKey(bot_id=43, chat_id=key.chat_id, user_id=key.user_id)
    if isinstance(storage, BeanieStorage):
        return storage.for_namespace("another-bot", state_ttl=storage.state_ttl), other_key
    return storage, other_key


# --- aiogram's tests/test_fsm/storage/test_storages.py ------------------------------


async def test_set_state(storage: BaseStorage, update: Update) -> None:
    async with update():
        assert await storage.get_state(KEY) is None
        await storage.set_state(KEY, "state")
        assert await storage.get_state(KEY) == "state"
        await storage.set_state(KEY, None)
        assert await storage.get_state(KEY) is None
        await storage.set_state(KEY, Form.name)
        assert await storage.get_state(KEY) == "Form:name"
    assert await storage.get_state(KEY) == "Form:name"


async def test_set_data(storage: BaseStorage, update: Update) -> None:
    class CustomTypedDict(TypedDict, total=False):
        foo: str
        bar: str

    async with update():
        assert await storage.get_data(KEY) == {}
        assert await storage.get_value(KEY, "foo") is None
        assert await storage.get_value(KEY, "foo", "baz") == "baz"
        await storage.set_data(KEY, {"foo": "bar"})
        assert await storage.get_data(KEY) == {"foo": "bar"}
        assert await storage.get_value(KEY, "foo") == "bar"
        assert await storage.get_value(KEY, "foo", "baz") == "bar"
        await storage.set_data(KEY, {})
        assert await storage.get_data(KEY) == {}
        assert await storage.get_value(KEY, "foo") is None
        assert await storage.get_value(KEY, "foo", "baz") == "baz"
        await storage.set_data(KEY, CustomTypedDict(foo="bar", bar="baz"))
        assert await storage.get_data(KEY) == {"foo": "bar", "bar": "baz"}
        with pytest.raises(DataNotDictLikeError):
            await storage.set_data(KEY, ())  # type: ignore[arg-type]
        assert await storage.get_data(KEY) == {"foo": "bar", "bar": "baz"}, "nothing changed"
    assert await storage.get_data(KEY) == {"foo": "bar", "bar": "baz"}
    assert await storage.get_value(KEY, "bar") == "baz"


async def test_update_data(storage: BaseStorage, update: Update) -> None:
    async with update():
        assert await storage.get_data(KEY) == {}
        assert await storage.update_data(KEY, {"foo": "bar"}) == {"foo": "bar"}
        assert await storage.update_data(KEY, {}) == {"foo": "bar"}
        assert await storage.get_data(KEY) == {"foo": "bar"}
        assert await storage.update_data(KEY, {"baz": "spam"}) == {"foo": "bar", "baz": "spam"}
        assert await storage.get_data(KEY) == {"foo": "bar", "baz": "spam"}
        assert await storage.update_data(KEY, {"baz": "test"}) == {"foo": "bar", "baz": "test"}
        assert await storage.get_data(KEY) == {"foo": "bar", "baz": "test"}
    assert await storage.get_data(KEY) == {"foo": "bar", "baz": "test"}


# --- beyond aiogram's own tests -----------------------------------------------------


async def test_update_after_set_data_merges_into_the_new_data(
    storage: BaseStorage, update: Update
) -> None:
    await storage.set_data(KEY, {"old": 1, "kept": 1})
    async with update():
        await storage.set_data(KEY, {"kept": 2})
        assert await storage.update_data(KEY, {"new": 3}) == {"kept": 2, "new": 3}
    assert await storage.get_data(KEY) == {"kept": 2, "new": 3}


async def test_state_and_data_are_independent(storage: BaseStorage, update: Update) -> None:
    async with update():
        await storage.update_data(KEY, {"answer": 42})
        assert await storage.get_state(KEY) is None
        await storage.set_state(KEY, "Form:name")
        await storage.set_data(KEY, {})
        assert await storage.get_state(KEY) == "Form:name"
    assert await storage.get_state(KEY) == "Form:name"
    assert await storage.get_data(KEY) == {}
    await storage.update_data(KEY, {"answer": 42})
    await storage.set_state(KEY, None)
    assert await storage.get_data(KEY) == {"answer": 42}


async def test_clear_forgets_state_and_data(storage: BaseStorage, update: Update) -> None:
    context = FSMContext(storage=storage, key=KEY)
    await context.set_state(Form.name)
    await context.update_data(name="Ann")
    async with update():
        await context.clear()
        assert await context.get_state() is None
        assert await context.get_data() == {}
        await context.update_data(age=30)
    assert await context.get_state() is None
    assert await context.get_data() == {"age": 30}, "a fresh start after the clear"


async def test_values_and_odd_keys_round_trip(storage: BaseStorage, update: Update) -> None:
    data = {
        "text": "naïve ✓ 日本",
        "numbers": [0, -1, 2**62, 1.5],
        "flags": {"yes": True, "no": False, "nothing": None},
        "nested": {"list": [{"deep": ["x"]}], "empty": {}},
        "a.b": 1,
        "$set": 2,
        "": 3,
    }
    async with update():
        await storage.set_data(KEY, data)
        assert await storage.get_data(KEY) == data
        assert await storage.update_data(KEY, {"c.d": 4, "$inc": 5}) == {
            **data,
            "c.d": 4,
            "$inc": 5,
        }
    assert await storage.get_data(KEY) == {**data, "c.d": 4, "$inc": 5}


async def test_data_given_and_returned_are_copies(storage: BaseStorage, update: Update) -> None:
    given = {"a": 1}
    async with update():
        await storage.set_data(KEY, given)
        given["a"] = 2
        returned = await storage.get_data(KEY)
        returned["b"] = 3
        assert await storage.get_data(KEY) == {"a": 1}
    assert await storage.get_data(KEY) == {"a": 1}


@pytest.mark.parametrize(
    "other",
    [
        StorageKey(bot_id=42, chat_id=-101, user_id=7),
        StorageKey(bot_id=42, chat_id=-100, user_id=8),
        StorageKey(bot_id=42, chat_id=-100, user_id=7, thread_id=5),
        StorageKey(bot_id=42, chat_id=-100, user_id=7, business_connection_id="biz"),
        StorageKey(bot_id=42, chat_id=-100, user_id=7, destiny="other"),
    ],
    ids=["chat", "user", "thread", "business_connection", "destiny"],
)
async def test_keys_differing_in_one_field_are_isolated(
    storage: BaseStorage, update: Update, other: StorageKey
) -> None:
    async with update():
        await storage.set_state(KEY, "Form:name")
        await storage.set_data(KEY, {"mine": True})
        assert await storage.get_state(other) is None
        assert await storage.get_data(other) == {}
        await storage.set_state(other, "Other:step")
        await storage.update_data(other, {"theirs": True})
    assert await storage.get_state(KEY) == "Form:name"
    assert await storage.get_data(KEY) == {"mine": True}
    assert await storage.get_state(other) == "Other:step"
    assert await storage.get_data(other) == {"theirs": True}


async def test_bots_are_isolated(storage: BaseStorage, update: Update) -> None:
    theirs, their_key = other_bot(storage, KEY)
    async with update():
        await storage.set_state(KEY, "Form:name")
        await theirs.update_data(their_key, {"theirs": True})
        assert await theirs.get_state(their_key) is None
        assert await storage.get_data(KEY) == {}
    assert await storage.get_state(KEY) == "Form:name"
    assert await theirs.get_state(their_key) is None
    assert await theirs.get_data(their_key) == {"theirs": True}


# Who shares a conversation with user 7 in chat -100 under each FSM strategy:
# the same user in another chat, another user in the chat, the same user in a topic.
SHARED_WITH = {
    FSMStrategy.USER_IN_CHAT: {"topic"},
    FSMStrategy.CHAT: {"other user", "topic"},
    FSMStrategy.GLOBAL_USER: {"other chat", "topic"},
    FSMStrategy.USER_IN_TOPIC: set(),
    FSMStrategy.CHAT_TOPIC: {"other user"},
}


@pytest.mark.parametrize("strategy", list(SHARED_WITH), ids=lambda strategy: strategy.name)
async def test_strategy_keys_share_state_as_aiogram_says(
    storage: BaseStorage, update: Update, strategy: FSMStrategy
) -> None:
    def key(chat_id: int, user_id: int, thread_id: int | None = None) -> StorageKey:
        chat, user, thread = apply_strategy(strategy, chat_id, user_id, thread_id)
        return StorageKey(bot_id=42, chat_id=chat, user_id=user, thread_id=thread)

    others = {
        "other chat": key(-200, 7),
        "other user": key(-100, 8),
        "topic": key(-100, 7, thread_id=5),
    }
    async with update():
        await storage.set_state(key(-100, 7), "Form:name")
        in_update = {name for name, other in others.items() if await storage.get_state(other)}
    assert in_update == SHARED_WITH[strategy]
    assert {name for name, other in others.items() if await storage.get_state(other)} == (
        SHARED_WITH[strategy]
    )


# --- where BeanieStorage differs on purpose -----------------------------------------


async def test_bots_are_told_apart_by_namespace_not_by_bot_id(
    database: AsyncDatabase[Document],
) -> None:
    """Each bot gets its own namespace (its registry name); the key's bot_id is only recorded."""
    same_user_other_bot_id = StorageKey(bot_id=43, chat_id=KEY.chat_id, user_id=KEY.user_id)
    memory = MemoryStorage()
    beanie = BeanieStorage(database, "contract")
    for storage in (memory, beanie):
        await storage.set_state(KEY, "Form:name")
    assert await memory.get_state(same_user_other_bot_id) is None
    assert await beanie.get_state(same_user_other_bot_id) == "Form:name"
    assert await beanie.for_namespace("another-bot").get_state(KEY) is None


async def test_returned_data_is_a_deep_copy(database: AsyncDatabase[Document]) -> None:
    """MemoryStorage copies only the top level: changing a nested value changes its record."""
    memory = MemoryStorage()
    beanie = BeanieStorage(database, "contract")
    for storage in (memory, beanie):
        await storage.set_data(KEY, {"answers": ["red"]})
        (await storage.get_data(KEY))["answers"].append("blue")
    assert await memory.get_data(KEY) == {"answers": ["red", "blue"]}
    assert await beanie.get_data(KEY) == {"answers": ["red"]}


async def test_only_what_mongodb_stores_is_accepted(database: AsyncDatabase[Document]) -> None:
    """MemoryStorage keeps any object; BeanieStorage refuses what BSON cannot hold, by key,
    before writing, and gives tuples back as lists."""
    memory = MemoryStorage()
    beanie = BeanieStorage(database, "contract")
    await memory.set_data(KEY, {"colours": {"red"}, "pair": (1, 2)})
    assert await memory.get_data(KEY) == {"colours": {"red"}, "pair": (1, 2)}
    await beanie.set_data(KEY, {"kept": 1})
    with pytest.raises(FSMDataError, match=r"data\['colours'\] is a set"):
        await beanie.set_data(KEY, {"colours": {"red"}})
    assert await beanie.get_data(KEY) == {"kept": 1}
    await beanie.set_data(KEY, {"pair": (1, 2)})
    assert await beanie.get_data(KEY) == {"pair": [1, 2]}
