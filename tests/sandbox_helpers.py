"""Shared by the sandbox tests: bots with inline buttons and failing handlers, the example registry.

The example bots send plain text only, so ``counter`` adds what they lack: an
inline keyboard, callback queries, and a message edited in place.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from e2e import REPO, BotyardProcess, copy_example_bots

COUNTER_BOT = '''
"""Counts button presses by editing its own message; the count lives in the FSM data."""
from aiogram import F, Router
from aiogram.filters import CommandStart
from aiogram.fsm.context import FSMContext
from aiogram.types import CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, Message


def _keyboard() -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        inline_keyboard=[
            [
                InlineKeyboardButton(text="+1", callback_data="inc"),
                InlineKeyboardButton(text="Done", callback_data="done"),
            ]
        ]
    )


def router() -> Router:
    counter = Router()

    @counter.message(CommandStart())
    async def start(message: Message, state: FSMContext) -> None:
        await state.set_data({"count": 0})
        await message.answer("Count: 0", reply_markup=_keyboard())

    @counter.callback_query(F.data == "inc")
    async def increment(query: CallbackQuery, state: FSMContext) -> None:
        count = (await state.get_data()).get("count", 0) + 1
        await state.update_data(count=count)
        await query.message.edit_text(f"Count: {count}", reply_markup=_keyboard())
        await query.answer(f"now {count}")

    @counter.callback_query(F.data == "done")
    async def done(query: CallbackQuery, state: FSMContext) -> None:
        count = (await state.get_data()).get("count", 0)
        await state.clear()
        await query.message.edit_text(f"Final count: {count}")
        await query.answer()

    return counter
'''


FAILING_BOT = '''
"""Answers, then raises: a handler failure the sandbox must show in the chat.

"slow N" instead sleeps N seconds before answering: an update still in flight.
"""
import asyncio

from aiogram import Router
from aiogram.types import Message


def router() -> Router:
    failing = Router()

    @failing.message()
    async def answer_then_fail(message: Message) -> None:
        text = message.text or ""
        if text.startswith("slow "):
            await asyncio.sleep(float(text.split()[1]))
            await message.answer(f"done {text}")
            return
        await message.answer(f"about to fail on {text}")
        raise ZeroDivisionError(f"cannot divide {text} by zero")

    return failing
'''


def example_registry(directory: Path, database: str, *, failing: bool = False) -> Path:
    """The repository's ``botyard.yaml`` and ``bots/`` in ``directory``, plus the counter bot
    (and, with ``failing``, a bot whose handler raises).

    Only the database name changes, so tests never share records.
    """
    copy_example_bots(directory)
    (directory / "sandbox_counter.py").write_text(COUNTER_BOT)
    (directory / "sandbox_failing.py").write_text(FAILING_BOT)
    text = (REPO / "botyard.yaml").read_text()
    text, replaced = re.subn(r"(?m)^  database: botyard$", f"  database: {database}", text)
    assert replaced == 1, "botyard.yaml no longer names its database as the tests expect"
    text += "  - name: counter\n    routers: [sandbox_counter:router]\n"
    if failing:
        text += "  - name: failing\n    routers: [sandbox_failing:router]\n"
    path = directory / "botyard.yaml"
    path.write_text(text)
    return path


@contextlib.contextmanager
def sandbox_process(
    registry: Path, env: dict[str, str], *args: str, timeout: float = 90.0
) -> Iterator[tuple[BotyardProcess, str]]:
    """``botyard sandbox REGISTRY`` (on any free port unless ``args`` name one) as a
    subprocess, killed on exit if still running; yields it and the page's URL."""
    port = () if "--port" in args else ("--port", "0")
    with BotyardProcess(
        ["sandbox", str(registry), *port, *args], env=env, cwd=registry.parent
    ) as process:
        line = process.wait_for_log(r"botyard sandbox: open http://", timeout=timeout)
        match = re.search(r"open (http://\S+)", line)
        assert match is not None
        yield process, match.group(1)


def wait_until(
    condition: Callable[[], object], *, timeout: float = 30.0, what: str = "condition"
) -> None:
    """Poll ``condition()`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout}s")
