"""``botyard run`` under Telegram's flood limits: sends wait for their slots, none meets a 429."""

from __future__ import annotations

import re
import time
import urllib.request

import pytest

from botyard.database.embedded import free_port
from botyard.emulator import FloodLimits

from e2e import World

pytestmark = pytest.mark.e2e

FLOOD_BOT = '''
"""Sends many messages at once: "burst N" to its own chat, "fanout FIRST COUNT" to many."""
import asyncio

from aiogram import Bot, F, Router
from aiogram.types import Message


def router() -> Router:
    flood = Router()

    @flood.message(F.text.startswith("burst "))
    async def burst(message: Message) -> None:
        for number in range(int(message.text.split()[1])):
            await message.answer(f"burst {number}")

    @flood.message(F.text.startswith("fanout "))
    async def fanout(message: Message, bot: Bot) -> None:
        first, count = (int(word) for word in message.text.split()[1:])
        chats = range(first, first + count)
        await asyncio.gather(*(bot.send_message(chat, f"news for {chat}") for chat in chats))

    return flood
'''

PER_CHAT = 5.0
BURST = 3
PER_BOT = 30.0
BURST_USER = 1001
FANOUT_CHATS = list(range(2001, 2201))


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    found = re.search(rf'^{name}{{bot="flood"}} (\S+)$', text, re.MULTILINE)
    assert found is not None, f"{name} missing from /metrics"
    return float(found.group(1))


def test_sends_wait_for_their_slots_and_every_message_arrives_once(world: World) -> None:
    (world.directory / "floodbot.py").write_text(FLOOD_BOT)
    ops_port = free_port()
    world.write(
        {"flood": "floodbot:router"},
        extra=(
            f"  flood_limits:\n    per_chat: {PER_CHAT:.0f}/s\n"
            f"ops:\n  listen: 127.0.0.1:{ops_port}\n"
        ),
    )
    token = world.token("flood")
    world.emulator.enforce_flood_limits(FloodLimits(per_chat=PER_CHAT))
    try:
        for chat in FANOUT_CHATS:  # each user writes first: a bot can only write to known chats
            world.say("flood", chat, "hi")
        with world.botyard() as botyard:
            world.wait_all_running(botyard, ["flood"])

            started = time.monotonic()
            world.say("flood", BURST_USER, "burst 60")
            replies = world.emulator.wait_for_reply(token, BURST_USER, count=60, timeout=120)
            elapsed = time.monotonic() - started
            assert isinstance(replies, list)
            assert [reply["text"] for reply in replies] == [f"burst {n}" for n in range(60)]
            assert elapsed >= (60 - BURST) / PER_CHAT, f"60 sends to one chat took {elapsed:.1f}s"

            started = time.monotonic()
            world.say("flood", FANOUT_CHATS[0], f"fanout {FANOUT_CHATS[0]} {len(FANOUT_CHATS)}")
            for chat in FANOUT_CHATS:
                world.emulator.wait_for_reply(token, chat, timeout=120)
            elapsed = time.monotonic() - started
            assert elapsed >= (len(FANOUT_CHATS) - BURST) / PER_BOT, (
                f"200 sends to 200 chats took {elapsed:.1f}s"
            )

            assert len(world.emulator.sent_messages(token, BURST_USER)) == 60
            for chat in FANOUT_CHATS:
                assert [m["text"] for m in world.emulator.sent_messages(token, chat)] == [
                    f"news for {chat}"
                ]
            assert world.emulator.fault_counts(token) == {"injected": {}, "refused": {}}
            assert metric(ops_port, "botyard_api_too_many_requests_total") == 0
            assert metric(ops_port, "botyard_api_sends_delayed_total") >= 60 - BURST
            assert metric(ops_port, "botyard_api_send_delay_seconds_total") >= 10
            assert metric(ops_port, "botyard_api_calls_given_up_total") == 0
            assert botyard.stop() == 0
    finally:
        world.emulator.lift_flood_limits()
