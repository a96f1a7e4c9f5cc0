"""What flood control and the retry wrapper cost per Bot API call when nothing waits.

    python -m benchmarks.outbound            # 5 runs of 20,000 calls per case
    python -m benchmarks.outbound --calls 2000 --runs 3

Each case sends pre-built aiogram method objects through
:class:`botyard.runtime.outbound.Outbound` to a ``make_request`` that answers at
once, so only botyard's own work is timed, as CPU time of this process (steadier
than the clock on a shared machine); the same calls made to ``make_request``
directly are the baseline. Sends go round-robin to 10,000 chats with rates no
send reaches, so the buckets are updated and the idle chats evicted but
nothing sleeps: the common path. Prints the median extra
microseconds per call of each case.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from aiogram import Bot
from aiogram.methods import GetMe, SendMessage, TelegramMethod

from botyard.runtime.outbound import Outbound, OutboundPolicy

#: A made-up token: the benchmark never reaches Telegram (its session answers itself).
TOKEN = "123456789:" + "A" * 35
CHATS = 10_000
UNREACHABLE = OutboundPolicy(per_bot=1e9, per_chat=1e9, per_group=1e9)


async def _answer(bot: Bot, method: TelegramMethod[Any]) -> Any:
    return True


async def _time(
    call: Callable[[Bot, TelegramMethod[Any]], Any],
    bot: Bot,
    methods: Sequence[TelegramMethod[Any]],
) -> float:
    started = time.process_time()
    for method in methods:
        await call(bot, method)
    return time.process_time() - started


async def _case(methods: Sequence[TelegramMethod[Any]], runs: int) -> float:
    """Median extra seconds per call through the middleware, over ``runs`` runs."""
    bot = Bot(TOKEN)
    outbound = Outbound()
    outbound.register(bot, "bench", UNREACHABLE)

    async def through(bot: Bot, method: TelegramMethod[Any]) -> Any:
        return await outbound(_answer, bot, method)

    extra = []
    for _ in range(runs):
        direct = await _time(_answer, bot, methods)
        wrapped = await _time(through, bot, methods)
        extra.append((wrapped - direct) / len(methods))
    await bot.session.close()
    return statistics.median(extra)


async def measure(calls: int = 20_000, runs: int = 5) -> dict[str, float]:
    """Median extra microseconds per call: a send to one of many chats, and a non-send."""
    sends = [SendMessage(chat_id=1 + n % CHATS, text="x") for n in range(calls)]
    group_sends = [SendMessage(chat_id=-(1 + n % CHATS), text="x") for n in range(calls)]
    others = [GetMe() for _ in range(calls)]
    return {
        "send to a private chat, us": await _case(sends, runs) * 1e6,
        "send to a group, us": await _case(group_sends, runs) * 1e6,
        "getMe (not throttled), us": await _case(others, runs) * 1e6,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.outbound", description=__doc__)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    for case, micros in asyncio.run(measure(args.calls, args.runs)).items():
        print(f"{case}: {micros:.2f}")


if __name__ == "__main__":
    main()
