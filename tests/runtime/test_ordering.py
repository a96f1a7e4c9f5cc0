"""Per-key ordering, the concurrency cap and offset confirmation."""

from __future__ import annotations

import asyncio

from aiogram.fsm.strategy import FSMStrategy
from aiogram.types import Update

from botyard.runtime.ordering import KeyedExecutor, OffsetTracker, ordering_key


def message(update_id: int, chat_id: int, user_id: int) -> Update:
    return Update.model_validate(
        {
            "update_id": update_id,
            "message": {
                "message_id": update_id,
                "date": 0,
                "chat": {"id": chat_id, "type": "group" if chat_id < 0 else "private"},
                "from": {"id": user_id, "is_bot": False, "first_name": "U"},
                "text": "x",
            },
        }
    )


async def test_jobs_of_one_key_run_in_order_and_keys_run_in_parallel() -> None:
    executor = KeyedExecutor(limit=10)
    log: list[tuple[str, int]] = []
    running = 0
    peak = 0

    def job(key: str, number: int) -> object:
        async def run() -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.01 * (3 - number))  # later jobs are quicker
            log.append((key, number))
            running -= 1

        return run

    for number in range(3):
        for key in ("a", "b", "c"):
            executor.submit(key, job(key, number))  # type: ignore[arg-type]
    assert await executor.join(5)
    for key in ("a", "b", "c"):
        assert [n for k, n in log if k == key] == [0, 1, 2]
    assert peak == 3  # one per key at a time, keys together


async def test_the_cap_bounds_concurrency_across_keys() -> None:
    executor = KeyedExecutor(limit=2)
    running = 0
    peak = 0

    async def job() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1

    for key in range(10):
        executor.submit(key, job)
    assert executor.pending == 10
    assert await executor.join(5)
    assert peak == 2
    assert executor.pending == 0


async def test_a_failing_job_does_not_stop_its_key() -> None:
    executor = KeyedExecutor(limit=1)
    done: list[int] = []

    async def boom() -> None:
        raise RuntimeError("bug")

    async def ok() -> None:
        done.append(1)

    executor.submit("k", boom)
    executor.submit("k", ok)
    assert await executor.join(5)
    assert done == [1]


async def test_join_times_out_and_cancel_clears() -> None:
    executor = KeyedExecutor(limit=1)
    executor.submit("k", lambda: asyncio.sleep(10))
    assert not await executor.join(0.05)
    await executor.cancel()
    assert await executor.join(0.05)


def test_offset_confirms_only_the_finished_prefix() -> None:
    tracker = OffsetTracker()
    assert tracker.offset is None
    for update_id in (10, 11, 12):
        tracker.start(update_id)
    assert tracker.offset == 10
    tracker.finish(11)
    assert tracker.offset == 10, "11 finished but 10 did not: nothing may be confirmed"
    assert tracker.known(11)
    assert tracker.known(10)
    assert not tracker.known(13)
    tracker.finish(10)
    assert tracker.offset == 12
    tracker.finish(12)
    assert tracker.offset == 13
    assert tracker.unfinished == 0


def test_ordering_key_follows_the_fsm_strategy() -> None:
    alice, bob = message(1, -5, 1), message(2, -5, 2)
    assert ordering_key(alice, FSMStrategy.USER_IN_CHAT) != ordering_key(
        bob, FSMStrategy.USER_IN_CHAT
    )
    assert ordering_key(alice, FSMStrategy.CHAT) == ordering_key(bob, FSMStrategy.CHAT)
    no_chat = Update.model_validate({"update_id": 3})
    assert ordering_key(no_chat, FSMStrategy.USER_IN_CHAT) == ("update", 3)


def test_lower_ids_after_a_quiet_period_are_a_new_sequence() -> None:
    """Telegram may restart a bot's update ids lower after weeks without updates."""
    now = [0.0]
    tracker = OffsetTracker(clock=lambda: now[0])
    for update_id in (700_000, 700_001):
        tracker.start(update_id)
        tracker.finish(update_id)
    now[0] += 60
    assert tracker.known(700_000), "a redelivery soon after: already handled"
    tracker.start(700_002)  # still unfinished when a long quiet period follows
    now[0] += 8 * 24 * 3600
    assert tracker.known(5), "with an update unfinished, Telegram may still send old ones"
    tracker.finish(700_002)
    assert not tracker.known(5)
    tracker.start(5)
    assert tracker.offset == 5
    tracker.finish(5)
    assert tracker.offset == 6
    assert tracker.known(5)
    assert not tracker.known(6)
