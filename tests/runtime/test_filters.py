"""Magic filters run on the event loop; filters that may block keep aiogram's thread."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

from aiogram import Bot, F, Router
from aiogram.dispatcher.event.bases import UNHANDLED
from aiogram.filters import and_f, invert_f, or_f
from aiogram.types import Chat, Message
from pymongo import AsyncMongoClient

from botyard.runtime.filters import resolve_magic_filters_inline
from botyard.runtime.routers import BotRouters
from botyard.runtime.runner import BotRunner, BotSpec
from botyard.storage import BeanieStorage


class ProbeMessage(Message):
    """A message noting the thread each read of ``probe`` happens in."""

    @property
    def probe(self) -> str | None:
        seen_threads.append(threading.get_ident())
        return self.text


seen_threads: list[int] = []


def message(text: str) -> ProbeMessage:
    return ProbeMessage(
        message_id=1, date=datetime.now(UTC), chat=Chat(id=1, type="private"), text=text
    )


def blocking_check(value: Any) -> bool:
    """A filter of the bot's own: it may block, so it must not run on the loop."""
    seen_threads.append(threading.get_ident())
    return bool(value == "go")


async def dispatch(router: Router, text: str) -> Any:
    seen_threads.clear()
    return await router.propagate_event("message", message(text))


async def handled(event: Message, **data: Any) -> dict[str, Any]:
    """What the filters added to the handler's data."""
    return {key: value for key, value in data.items() if key not in {"event_router", "handler"}}


def answer_router(*filters: Any) -> Router:
    router = Router()
    router.message.register(handled, *filters)
    resolve_magic_filters_inline(router)
    return router


async def test_a_magic_filter_runs_on_the_loop_and_still_decides() -> None:
    router = answer_router(F.probe == "go")
    loop_thread = threading.get_ident()
    assert await dispatch(router, "go") == {}
    assert seen_threads == [loop_thread]
    assert await dispatch(router, "stop") is UNHANDLED
    assert seen_threads == [loop_thread]


async def test_a_magic_filter_result_reaches_the_handler() -> None:
    router = answer_router(F.probe.regexp(r"(\d+)").as_("match"))
    result = await dispatch(router, "42 rooms")
    assert result["match"].group(1) == "42"
    assert seen_threads == [threading.get_ident()]
    assert await dispatch(router, "no digits") is UNHANDLED


async def test_magic_filters_inside_logic_filters_and_on_the_observer_run_on_the_loop() -> None:
    router = answer_router(
        and_f(F.probe.startswith("g"), or_f(F.probe == "nope", F.probe.len() == 2)),
        invert_f(F.probe == "stop"),
    )
    router.message.filter(F.probe.in_({"go", "stop"}))
    resolve_magic_filters_inline(router)  # again, after the observer's own filter: harmless
    assert await dispatch(router, "go") == {}
    assert set(seen_threads) == {threading.get_ident()}
    assert len(seen_threads) == 5  # observer filter, startswith, ==, len, ~(==)
    assert await dispatch(router, "stop") is UNHANDLED


async def test_a_magic_filter_calling_the_bots_code_keeps_the_thread() -> None:
    router = answer_router(F.probe.func(blocking_check))
    assert await dispatch(router, "go") == {}
    probe_thread, check_thread = seen_threads
    assert probe_thread == check_thread != threading.get_ident()


async def test_a_plain_synchronous_filter_keeps_the_thread() -> None:
    router = answer_router(lambda event: blocking_check(event.text))
    assert await dispatch(router, "go") == {}
    assert await dispatch(router, "stop") is UNHANDLED
    [check_thread] = seen_threads
    assert check_thread != threading.get_ident()


async def test_a_runners_dispatcher_resolves_magic_filters_inline(mongo_uri: str) -> None:
    router = Router()
    router.message.register(handled, F.text == "go")
    client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_uri)
    storage = BeanieStorage(client["unused"], "filters")  # no update is fed: never queried
    spec = BotSpec(name="filters", token="1:unused", routers=BotRouters.of(router), storage=storage)
    dispatcher = BotRunner(spec, Bot("1:unused")).dispatcher
    await client.close()
    [handler] = dispatcher.sub_routers[0].message.handlers
    assert handler.filters is not None
    [filter_object] = handler.filters
    assert filter_object.magic is not None
    assert filter_object.awaitable
