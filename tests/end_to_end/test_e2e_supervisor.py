"""``botyard run`` end to end: a real subprocess, the Bot API emulator, a real database."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from botyard.cli import main
from botyard.database.embedded import SecantusServer
from botyard.emulator import EmulatorThread

from e2e import QUESTIONS, THANKS, BotyardProcess, World, copy_example_bots

pytestmark = pytest.mark.e2e


def test_three_bots_serve_several_users_with_isolated_state(world: World) -> None:
    world.write(
        {
            "registration": "bots.registration:router",
            "questionnaire": "bots.questionnaire:router",
            "echo": "bots.echo:router",
            "doomed": "bots.echo:router",
        }
    )
    users = [101, 102, 103]
    with world.botyard() as botyard:
        world.wait_all_running(botyard, ["registration", "questionnaire", "echo", "doomed"])
        for user in users:  # interleaved: every user talks to every bot at once
            world.say("questionnaire", user, "/start")
            world.say("registration", user, "/start")
            world.say("echo", user, f"hello from {user}")
        for user in users:
            assert world.reply("questionnaire", user) == QUESTIONS[0]
            assert world.reply("registration", user) == "Please enter your name."
            assert world.reply("echo", user) == f"hello from {user}"
        for user in users:
            world.say("registration", user, f"User {user}")
        for answer_index, answer in enumerate(["red", "cat", "soup"]):
            for user in users:
                world.say("questionnaire", user, f"{answer} {user}")
            for user in users:
                expected = QUESTIONS[answer_index + 1] if answer_index < 2 else THANKS
                assert world.reply("questionnaire", user) == expected
        for user in users:
            assert world.reply("registration", user) == (
                f"Your name, User {user}, was recorded and state is stored in MongoDB."
            )

        # a token revoked while running stops that bot alone
        world.emulator.revoke(world.tokens["doomed"])
        botyard.wait_for_log(r"bot=doomed status=unauthorized", timeout=60)
        world.say("echo", 104, "still here?")
        assert world.reply("echo", 104) == "still here?"
        assert botyard.stop() == 0

    questionnaire = world.records("questionnaire")
    registration = world.records("registration")
    for user in users:
        assert questionnaire[user]["data"] == {
            "q1": f"red {user}",
            "q2": f"cat {user}",
            "q3": f"soup {user}",
        }
        assert questionnaire[user]["state"] is None
        assert registration[user]["data"] == {"name": f"User {user}"}
        assert registration[user]["state"] is None
    assert world.records("echo") == {}, "the echo bot never uses the FSM"
    assert "bot=echo status=unauthorized" not in botyard.output


def test_sigkill_mid_questionnaire_then_restart_loses_nothing(world: World) -> None:
    world.write({"questionnaire": "bots.questionnaire:router", "slow": "slowbot:router"})
    user = 201
    with world.botyard() as first:
        world.wait_all_running(first, ["questionnaire", "slow"])
        world.say("questionnaire", user, "/start")
        assert world.reply("questionnaire", user) == QUESTIONS[0]
        world.say("questionnaire", user, "red")
        assert world.reply("questionnaire", user) == QUESTIONS[1]
        world.say("questionnaire", user, "cat")
        assert world.reply("questionnaire", user) == QUESTIONS[2]
        in_flight = world.say("slow", user, "slow 3")
        first.wait_for_log(r"slow handler started: slow 3")
        first.kill()
    slow_token = world.tokens["slow"]
    assert in_flight["update_id"] in [
        u["update_id"] for u in world.emulator.pending_updates(slow_token)
    ]
    # messages sent while botyard is down wait at Telegram
    world.say("questionnaire", user, "pizza")
    world.say("questionnaire", 202, "/start")

    with world.botyard() as second:
        assert world.reply("questionnaire", user) == THANKS
        assert world.reply("questionnaire", 202) == QUESTIONS[0]
        slow_reply = world.emulator.wait_for_reply(slow_token, user, timeout=30)
        assert isinstance(slow_reply, dict)
        assert slow_reply["text"] == "done slow 3"
        assert second.stop() == 0
    record = world.records("questionnaire")[user]
    assert record["data"] == {"q1": "red", "q2": "cat", "q3": "pizza"}
    assert record["state"] is None
    assert world.emulator.pending_updates(slow_token) == []
    done = [m for m in world.emulator.sent_messages(slow_token, user) if m["text"] == "done slow 3"]
    assert len(done) == 1, "the killed run never answered; the restart answered once"


def test_hot_reload_adds_and_removes_bots_mid_conversation(world: World) -> None:
    world.write({"questionnaire": "bots.questionnaire:router", "echo": "bots.echo:router"})
    world.token("registration")
    user = 301
    with world.botyard() as botyard:
        world.wait_all_running(botyard, ["questionnaire", "echo"])
        world.say("questionnaire", user, "/start")
        assert world.reply("questionnaire", user) == QUESTIONS[0]
        world.say("questionnaire", user, "green")
        assert world.reply("questionnaire", user) == QUESTIONS[1]

        world.write(
            {
                "questionnaire": "bots.questionnaire:router",
                "registration": "bots.registration:router",
            }
        )
        botyard.wait_for_log(r"registry reloaded: 1 added, 1 removed, 0 changed, 1 unchanged")
        botyard.wait_for_log(r"bot=registration status=running")
        world.say("registration", user, "/start")
        assert world.reply("registration", user) == "Please enter your name."
        world.say("questionnaire", user, "dog")
        assert world.reply("questionnaire", user) == QUESTIONS[2]
        assert "bot=questionnaire stopped" not in botyard.output
        assert "bot=echo stopped" in botyard.output
        unanswered = world.say("echo", user, "anyone?")
        time.sleep(1.5)
        pending = world.emulator.pending_updates(world.tokens["echo"])
        assert unanswered["update_id"] in [u["update_id"] for u in pending]

        # an invalid file keeps the running registry
        world.path.write_text(world.path.read_text().replace("state_ttl", "stat_ttl"))
        botyard.wait_for_log(r"reload rejected, the running registry stays")
        botyard.wait_for_log(r"stat_ttl")
        world.say("questionnaire", user, "soup")
        assert world.reply("questionnaire", user) == THANKS

        # SIGHUP reloads on demand
        world.path.write_text(world.path.read_text().replace("stat_ttl", "state_ttl"))
        botyard.wait_for_log(r"registry reloaded", count=2)
        botyard.signal(signal.SIGHUP)
        botyard.wait_for_log(r"registry reloaded: 0 added, 0 removed, 0 changed, 2 unchanged")
        assert botyard.stop() == 0
    assert world.records("questionnaire")[user]["data"] == {
        "q1": "green",
        "q2": "dog",
        "q3": "soup",
    }


def test_sigterm_drains_in_flight_updates_and_exits_zero(world: World) -> None:
    world.write({"slow": "slowbot:router"})
    token = world.token("slow")
    with world.botyard() as botyard:
        world.wait_all_running(botyard, ["slow"])
        world.say("slow", 498, "whoami")  # handlers get the bot's config and the database
        assert world.reply("slow", 498) == f"slow on {world.database_name}"
        updates = [world.say("slow", 400 + i, "slow 1") for i in range(8)]
        updates += [world.say("slow", 499, f"quick {i}") for i in range(5)]
        botyard.wait_for_log(r"slow handler started", count=8)
        botyard.signal(signal.SIGTERM)
        assert botyard.wait(60) == 0
    assert "SIGTERM received" in botyard.output
    for i in range(8):
        assert [m["text"] for m in world.emulator.sent_messages(token, 400 + i)] == ["done slow 1"]
    assert [m["text"] for m in world.emulator.sent_messages(token, 499)] == [
        f"ok quick {i}" for i in range(5)
    ]
    assert world.emulator.pending_updates(token) == []
    assert world.emulator.confirmed_offset(token) == updates[-1]["update_id"] + 1


BAD_REGISTRIES = {
    "unknown key": ("    stat_ttl: 1h\n", "stat_ttl"),
    "bad duration": ("    state_ttl: 7 days\n", "invalid duration"),
    "unimportable router": ("    routers: [bots.nope:router]\n", "No module named 'bots.nope'"),
}


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unknown key", "botyard.yaml:7: bots[0] (echo).stat_ttl: unknown key 'stat_ttl'"),
        ("duplicate name", "duplicate"),
        ("duplicate token", "same token"),
        ("malformed token", "malformed token"),
        ("missing variable", "ECHO_TOKEN"),
        ("unimportable router", "No module named 'bots.nope'"),
        ("bad duration", "invalid duration '7 days'"),
    ],
)
def test_check_names_each_bad_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str, expected: str
) -> None:
    copy_example_bots(tmp_path)
    good = "1234567890:AAbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
    other = "1234567891:AAccccccccccccccccccccccccccccccccc"
    env = {"ECHO_TOKEN": good, "SECOND_TOKEN": other}
    bot = "  - name: echo\n    token: ${ECHO_TOKEN}\n    routers: [bots.echo:router]\n"
    second = "  - name: second\n    token: ${SECOND_TOKEN}\n    routers: [bots.echo:router]\n"
    body = {
        "unknown key": bot + "    stat_ttl: 1h\n",
        "duplicate name": bot + second.replace("name: second", "name: echo"),
        "duplicate token": bot + second.replace("SECOND_TOKEN", "ECHO_TOKEN"),
        "malformed token": bot,
        "missing variable": bot,
        "unimportable router": bot.replace("bots.echo", "bots.nope"),
        "bad duration": bot + "    state_ttl: 7 days\n",
    }[case]
    if case == "malformed token":
        env["ECHO_TOKEN"] = "12345:short-secret-value"
    if case == "missing variable":
        del env["ECHO_TOKEN"]
    for name in ("ECHO_TOKEN", "SECOND_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "botyard.yaml"
    path.write_text("storage:\n  uri: mongodb://127.0.0.1:1\nbots:\n" + body)
    result = CliRunner().invoke(main, ["check", str(path)])
    assert result.exit_code == 1, result.output
    assert "botyard.yaml" in result.output
    assert expected in result.output
    for value in env.values():
        assert value not in result.output


def test_run_refuses_a_bad_registry_before_starting_anything(world: World) -> None:
    world.write({"echo": "bots.echo:router", "broken": "bots.nope:router"})
    with BotyardProcess(
        ["run", str(world.path)],
        env=world.env(),
        cwd=world.directory,
        secrets=world.tokens.values(),
    ) as botyard:
        assert botyard.wait(60) == 1
    assert "No module named 'bots.nope'" in botyard.output
    assert "started" not in botyard.output
    assert world.emulator.calls(world.tokens["echo"], "getUpdates") == 0


def test_update_handled_while_mongodb_is_down_is_retried_after_recovery(
    tmp_path: Path, emulator: EmulatorThread, database_name: str
) -> None:
    server = SecantusServer(storage_path=str(tmp_path / "db"), sync_on_commit=True).start()
    try:
        world = World(tmp_path / "registry", emulator, server.uri, database_name)
        world.write({"questionnaire": "bots.questionnaire:router"})
        user = 501
        with world.botyard() as botyard:
            world.wait_all_running(botyard, ["questionnaire"])
            world.say("questionnaire", user, "/start")
            assert world.reply("questionnaire", user) == QUESTIONS[0]
            # The reply goes out inside the handler; the state is written when it returns.
            deadline = time.monotonic() + 30
            while user not in world.records("questionnaire"):
                assert time.monotonic() < deadline, "the /start state was never written"
                time.sleep(0.05)
            server.stop()
            answer = world.say("questionnaire", user, "blue")
            botyard.wait_for_log(rf"update={answer['update_id']} failed with \w+", timeout=60)
            token = world.tokens["questionnaire"]
            assert answer["update_id"] in [u["update_id"] for u in emulator.pending_updates(token)]
            server.start()
            assert world.reply("questionnaire", user, timeout=60) == QUESTIONS[1]
            assert botyard.stop() == 0
        assert world.records("questionnaire")[user]["data"] == {"q1": "blue"}
    finally:
        server.stop()
