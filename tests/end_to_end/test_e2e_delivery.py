"""Delivery under failure, end to end: ``botyard run`` against a misbehaving Bot API.

A real subprocess, the emulator injecting faults, and the test database. The
slow cases (a handler hanging 60 s, a chat under a 60 s flood wait) share one
run, with the malformed update beside them.
"""

from __future__ import annotations

import time
import urllib.request

import pytest

from e2e import QUESTIONS, THANKS, World, assert_conversations_stored

pytestmark = pytest.mark.e2e

REGISTERED = "Your name, {}, was recorded and state is stored in MongoDB."


def metric(world: World, line_start: str) -> float:
    """The value of the first ``/metrics`` line starting with ``line_start``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{world.port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    [line] = [line for line in text.splitlines() if line.startswith(line_start)]
    return float(line.rsplit(" ", 1)[1])


def test_stuck_chats_hold_back_no_one_and_a_sigkill_loses_nothing(world: World) -> None:
    world.write(
        {"slow": "slowbot:router", "echo": "bots.echo:router"},
        extra=f"ops:\n  listen: 127.0.0.1:{world.port}\n",
    )
    token = world.token("slow")
    hanging, flooded, others = 1, 2, range(100, 250)
    with world.botyard() as first:
        world.wait_all_running(first, ["slow", "echo"])
        stuck = world.say("slow", hanging, "slow 60")  # its handler takes 60 s
        first.wait_for_log(r"slow handler started: slow 60")
        world.emulator.add_fault(
            "429", methods="sendMessage", bot=token, chat_id=flooded, retry_after=60, times=1
        )
        waiting = world.say("slow", flooded, "hello")  # its reply meets a 60 s flood wait
        for user in others:
            world.say("slow", user, f"hi {user}")

        # A malformed update, then a normal one, to another bot of the same process.
        bad = world.emulator.queue_raw_update(
            world.tokens["echo"],
            "message",
            {"message_id": "not a number", "date": 0, "chat": {"id": 9}, "text": "private words"},
        )
        world.say("echo", 9, "after the bad one")

        for user in others:  # 150 chats: more than one getUpdates answer holds
            assert world.reply("slow", user, timeout=60) == f"ok hi {user}"
        assert world.emulator.sent_messages(token, hanging) == []
        assert world.emulator.sent_messages(token, flooded) == []
        first.wait_for_log(r"bot=slow journaled \d+ update\(s\) still being handled")
        assert world.emulator.confirmed_offset(token) > waiting["update_id"]

        assert world.reply("echo", 9) == "after the bad one"
        first.wait_for_log(
            rf"bot=echo update={bad['update_id']} skipped and confirmed: it does not parse"
        )
        assert metric(world, 'botyard_malformed_updates_total{bot="echo"}') == 1
        assert world.emulator.pending_updates(world.tokens["echo"]) == []

        # Everything else confirmed, the two stuck updates journaled: now a SIGKILL.
        deadline = time.monotonic() + 60
        while world.emulator.pending_updates(token):
            assert time.monotonic() < deadline, "updates left unconfirmed"
            time.sleep(0.1)
        first.kill()
    assert "private words" not in first.output

    with world.botyard() as second:
        assert world.reply("slow", flooded, timeout=60) == "ok hello"
        second.wait_for_log(r"bot=slow handling 2 journaled update\(s\)")
        assert world.reply("slow", hanging, timeout=120) == "done slow 60"
        assert second.stop() == 0
    assert texts(world, "slow", hanging) == ["done slow 60"]
    assert texts(world, "slow", flooded) == ["ok hello"]
    for user in others:
        assert texts(world, "slow", user) == [f"ok hi {user}"]
    assert world.records("slow")[hanging]["data"] == {"slow_60": True}
    assert world.collection("webhook_updates") == []
    assert world.emulator.pending_updates(token) == []
    assert stuck["update_id"] < waiting["update_id"]


FAULTS = [("429", {"retry_after": 1}), ("5xx", {"status": 502}), ("drop", {})]


def test_every_third_send_failing_skips_repeats_or_stalls_no_conversation(world: World) -> None:
    """In turn 429, 502 and dropped connections: 20 + 20 new users through each."""
    world.write(
        {"questionnaire": "bots.questionnaire:router", "registration": "bots.registration:router"}
    )
    rounds = [
        (kind, settings, range(100 * n + 1, 100 * n + 21))
        for n, (kind, settings) in enumerate(FAULTS)
    ]
    injected: dict[str, int] = {}
    with world.botyard() as botyard:
        world.wait_all_running(botyard, ["questionnaire", "registration"])
        for kind, settings, users in rounds:
            world.emulator.add_fault(kind, methods="sendMessage", every=3, **settings)
            try:
                converse(world, users)
            finally:
                world.emulator.clear_faults()
            counts = world.emulator.fault_counts(world.tokens["questionnaire"])["injected"]
            injected[kind] = counts["sendMessage"][kind]
        assert botyard.stop() == 0
    assert all(count > 0 for count in injected.values()), injected
    everyone = [user for _, _, users in rounds for user in users]
    for user in everyone:
        assert texts(world, "questionnaire", user) == [*QUESTIONS, THANKS]
        assert texts(world, "registration", user) == [
            "Please enter your name.",
            REGISTERED.format(f"Name {user}"),
        ]
    assert_conversations_stored(world, everyone, "Name {}")


def converse(world: World, users: range) -> None:
    """Every user through the questionnaire and the registration, all at once."""
    for user in users:
        world.say("questionnaire", user, "/start")
        world.say("registration", user, "/start")
    for user in users:
        assert world.reply("questionnaire", user, timeout=60) == QUESTIONS[0]
        assert world.reply("registration", user, timeout=60) == "Please enter your name."
    for user in users:
        world.say("registration", user, f"Name {user}")
    for step, answer in enumerate(["red", "cat", "soup"]):
        for user in users:
            world.say("questionnaire", user, f"{answer} {user}")
        for user in users:
            expected = QUESTIONS[step + 1] if step < 2 else THANKS
            assert world.reply("questionnaire", user, timeout=60) == expected
    for user in users:
        assert world.reply("registration", user, timeout=60) == REGISTERED.format(f"Name {user}")


def texts(world: World, bot: str, user: int) -> list[str]:
    return [
        str(message["text"]) for message in world.emulator.sent_messages(world.tokens[bot], user)
    ]
