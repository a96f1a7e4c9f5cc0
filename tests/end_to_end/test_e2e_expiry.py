"""Expiry on the real clock: the sweep calls every hook before MongoDB's TTL monitor strikes.

No shifted clock here: the server's own TTL monitor (SecantusDB runs one every
60 s, as MongoDB does) runs throughout. Before the backstop got its grace, the
monitor deleted every record a minute after its expiry, and the sweep, two
minutes in, found nothing to call ``on_state_expired`` for.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from pymongo import MongoClient

from botyard.database.documents import utcnow

from e2e import World

pytestmark = pytest.mark.e2e

EXPIRING_BOT = """
from aiogram import Bot, Router
from aiogram.fsm.context import FSMContext
from aiogram.types import Message


def router() -> Router:
    router = Router()

    @router.message()
    async def start(message: Message, state: FSMContext) -> None:
        await state.set_state("Quiz:q1")
        await message.answer("started")

    return router


async def on_state_expired(bot: Bot, key, state, data) -> None:
    await bot.send_message(key.chat_id, f"expired {state}")
"""

USERS = range(501, 521)
STATE_TTL = timedelta(seconds=10)
SWEEP_EVERY = timedelta(minutes=2)


@pytest.mark.timeout(480)
def test_every_expired_conversation_gets_its_hook_with_the_ttl_monitor_running(
    world: World,
) -> None:
    (world.directory / "expiring.py").write_text(EXPIRING_BOT)
    world.token("expiring")
    world.path.write_text(
        "storage:\n"
        "  uri: ${MONGODB_URI}\n"
        f"  database: {world.database_name}\n"
        "defaults:\n"
        "  state_ttl: 10s\n"
        "cleanup:\n"
        "  schedule: 2m\n"
        "bots:\n"
        "  - name: expiring\n"
        "    token: ${EXPIRING_TOKEN}\n"
        "    routers: [expiring:router]\n"
        "    api_server: ${BOT_API_SERVER}\n"
        "    on_state_expired: expiring:on_state_expired\n"
    )
    with MongoClient[dict[str, Any]](world.mongo_uri, tz_aware=True) as client:
        # Due at once: gone by the end only if the server's TTL monitor ran meanwhile.
        probe: dict[str, Any] = {
            "namespace": "monitor-probe",
            "purge_at": utcnow() - timedelta(seconds=1),
        }
        client[world.database_name]["fsm_records"].insert_one(probe)
    with world.botyard() as botyard:
        world.wait_all_running(botyard, ["expiring"])
        for user in USERS:
            world.say("expiring", user, "hi")
        for user in USERS:
            world.emulator.wait_for_reply(world.tokens["expiring"], user, text="started")
        deadline = time.monotonic() + 30  # the state is written once the handler returned
        while len(records := world.records("expiring")) < len(USERS):
            assert time.monotonic() < deadline, f"{len(records)} of {len(USERS)} records written"
            time.sleep(0.2)
        assert sorted(records) == list(USERS)
        for record in records.values():
            assert record["expires_at"] - record["updated_at"] == STATE_TTL, "what users see"
            # two sweep periods and the TTL monitor's two minutes
            assert record["purge_at"] - record["expires_at"] == 3 * SWEEP_EVERY

        for user in USERS:  # the first sweep runs two minutes after the start
            world.emulator.wait_for_reply(
                world.tokens["expiring"], user, text="expired Quiz:q1", timeout=240
            )
        botyard.wait_for_log(r"cleanup bot=expiring removed=20 in ", timeout=30)
        assert world.records("expiring") == {}
        assert "on_state_expired failed" not in botyard.output
        assert botyard.stop() == 0
    assert world.collection("fsm_records", {"namespace": "monitor-probe"}) == [], (
        "the server's TTL monitor ran during the test"
    )
