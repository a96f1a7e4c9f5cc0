"""``botyard run`` in webhook mode end to end: the emulator POSTs updates to a real subprocess."""

from __future__ import annotations

import signal
import socket

import pytest
from click.testing import CliRunner

from botyard.cli import main
from botyard.webhook.journal import JOURNAL_COLLECTION

from e2e import QUESTIONS, THANKS, World
from sandbox_helpers import wait_until

pytestmark = pytest.mark.e2e


def test_questionnaire_over_webhooks_with_a_secret_rotation(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.write({"questionnaire": "bots.questionnaire:router"}, mode="webhook")
    token = world.tokens["questionnaire"]
    users = [601, 602]
    with world.botyard() as botyard:
        botyard.wait_for_log(r"bot=questionnaire status=running", timeout=60)
        url = world.emulator.webhook_info(token)["url"]
        assert url.startswith(f"http://127.0.0.1:{world.port}/webhook/questionnaire/")
        for user in users:
            world.emulator.send_message(token, user, "/start")
        for user in users:
            assert world.reply("questionnaire", user) == QUESTIONS[0]
            world.emulator.send_message(token, user, f"red {user}")
            assert world.reply("questionnaire", user) == QUESTIONS[1]

        for name, value in world.env().items():
            monkeypatch.setenv(name, value)
        rotated = CliRunner().invoke(main, ["webhook", "rotate", str(world.path)])
        assert rotated.exit_code == 0, rotated.output
        assert "rotated the webhook secrets of questionnaire" in rotated.output
        botyard.wait_for_log(r"bot=questionnaire webhook secrets rotated", timeout=60)
        assert world.emulator.webhook_info(token)["url"] != url

        for user in users:
            world.emulator.send_message(token, user, f"cat {user}")
            assert world.reply("questionnaire", user) == QUESTIONS[2]
            world.emulator.send_message(token, user, f"soup {user}")
            assert world.reply("questionnaire", user) == THANKS
        assert botyard.stop() == 0
    assert world.collection("fsm_records") == [], "completed questionnaires leave no state"
    answers = world.answers("questionnaire")
    for user in users:
        assert answers[user] == [{"q1": f"red {user}", "q2": f"cat {user}", "q3": f"soup {user}"}]
    attempts = world.emulator.delivery_attempts(token)
    assert len(attempts) >= 8
    assert {attempt.update_id for attempt in attempts if attempt.status == 200} == {
        attempt.update_id for attempt in attempts
    }, "every update was eventually accepted"
    assert world.collection(JOURNAL_COLLECTION) == []
    assert world.emulator.pending_updates(token) == []


def test_sigterm_during_a_burst_drains_every_accepted_update(world: World) -> None:
    world.write({"slow": "slowbot:router"}, mode="webhook")
    token = world.tokens["slow"]
    with world.botyard() as botyard:
        botyard.wait_for_log(r"bot=slow status=running", timeout=60)
        sent = [world.emulator.send_message(token, 700 + i, "slow 2") for i in range(8)]
        sent += [world.emulator.send_message(token, 799, f"quick {i}") for i in range(5)]
        botyard.wait_for_log(r"slow handler started", count=8, timeout=60)
        # The emulator POSTs concurrently: the last quick one may still be on its way.
        wait_until(
            lambda: world.emulator.pending_updates(token) == [],
            what="every update answered 200",
        )
        # Every update has had its 200: from here on, only botyard holds them.
        botyard.signal(signal.SIGTERM)
        assert botyard.wait(60) == 0
    assert "SIGTERM received" in botyard.output
    for i in range(8):
        assert [m["text"] for m in world.emulator.sent_messages(token, 700 + i)] == ["done slow 2"]
    # Telegram (and the emulator) POST concurrently: one chat's arrival order may differ.
    assert sorted(m["text"] for m in world.emulator.sent_messages(token, 799)) == [
        f"ok quick {i}" for i in range(5)
    ]
    accepted = {a.update_id for a in world.emulator.delivery_attempts(token) if a.status == 200}
    assert accepted == {update["update_id"] for update in sent}
    assert world.collection(JOURNAL_COLLECTION) == []


def test_an_accepted_update_survives_sigkill_and_is_handled_after_restart(
    world: World,
) -> None:
    world.write({"slow": "slowbot:router"}, mode="webhook")
    token = world.tokens["slow"]
    with world.botyard() as first:
        first.wait_for_log(r"bot=slow status=running", timeout=60)
        update = world.emulator.send_message(token, 801, "slow 5")
        first.wait_for_log(r"slow handler started: slow 5", timeout=60)
        assert world.emulator.pending_updates(token) == [], "answered 200: Telegram forgot it"
        first.kill()
    [entry] = world.collection(JOURNAL_COLLECTION)
    assert entry["update_id"] == update["update_id"]
    assert entry["bot"] == "slow"

    with world.botyard() as second:
        second.wait_for_log(r"bot=slow handling 1 update\(s\) accepted earlier", timeout=60)
        assert world.reply("slow", 801, timeout=60) == "done slow 5"
        assert second.stop() == 0
    assert [m["text"] for m in world.emulator.sent_messages(token, 801)] == ["done slow 5"]
    assert world.collection(JOURNAL_COLLECTION) == []


def test_a_busy_listen_address_is_one_line_and_exit_1(world: World) -> None:
    world.write({"echo": "bots.echo:router"}, mode="webhook")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", world.port))
        taken.listen()
        with world.botyard() as botyard:
            assert botyard.wait(60) == 1
    assert f"error: cannot listen on 127.0.0.1:{world.port} (webhook.listen" in botyard.output
    assert "Traceback" not in botyard.output
    assert "bot=echo started" not in botyard.output
