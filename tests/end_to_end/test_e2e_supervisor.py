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
from botyard.registry.loader import load_registry
from botyard.registry.models import RegistryError

from e2e import (
    QUESTIONS,
    THANKS,
    BotyardProcess,
    World,
    assert_conversations_stored,
    copy_example_bots,
)

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

    assert_conversations_stored(world, users, "User {}")
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
        second.wait_for_log(r"bot=questionnaire status=running", timeout=120)
        assert world.reply("questionnaire", user) == THANKS
        assert world.reply("questionnaire", 202) == QUESTIONS[0]
        slow_reply = world.emulator.wait_for_reply(slow_token, user, timeout=30)
        assert isinstance(slow_reply, dict)
        assert slow_reply["text"] == "done slow 3"
        assert second.stop() == 0
    assert world.answers("questionnaire")[user] == [{"q1": "red", "q2": "cat", "q3": "pizza"}]
    assert user not in world.records("questionnaire")
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
    assert world.answers("questionnaire")[user] == [{"q1": "green", "q2": "dog", "q3": "soup"}]


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
    output = result.output
    if case in ("malformed token", "missing variable"):
        # check warns (commands that never call Telegram run without a token); run refuses.
        assert result.exit_code == 0, output
        assert f"warning: {path}:5: bots[0] (echo).token: " in output
        assert "botyard run needs this token" in output
        with pytest.raises(RegistryError) as refused:
            load_registry(path)  # what botyard run does first
        output = str(refused.value)
    else:
        assert result.exit_code == 1, output
    assert "botyard.yaml" in output
    assert expected in output
    for value in env.values():
        assert value not in output


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


GATED_QUESTIONNAIRE = '''
"""The questionnaire; an update's handling ends (and its writes go) once "gate" exists."""
import asyncio
from pathlib import Path
from typing import Any

from aiogram import Router

from bots.questionnaire import router as questionnaire

GATE = Path(__file__).with_name("gate")


def router() -> Router:
    built = questionnaire()

    @built.message.outer_middleware()
    async def hold(handler: Any, event: Any, data: dict[str, Any]) -> Any:
        result = await handler(event, data)
        while not GATE.exists():
            await asyncio.sleep(0.05)
        return result

    return built
'''


def test_mongodb_going_away_mid_handler_repeats_skips_and_loses_no_step(
    tmp_path: Path, emulator: EmulatorThread, database_name: str
) -> None:
    """Users whose writes meet the outage after the reply, and users whose reads meet it."""
    server = SecantusServer(storage_path=str(tmp_path / "db"), sync_on_commit=True).start()
    try:
        world = World(tmp_path / "registry", emulator, server.uri, database_name)
        (world.directory / "gated.py").write_text(GATED_QUESTIONNAIRE)
        gate = world.directory / "gate"
        gate.touch()
        world.write({"questionnaire": "gated:router"})
        token = world.tokens["questionnaire"]
        flushing, reading = range(501, 511), range(511, 521)
        users = [*flushing, *reading]
        with world.botyard() as botyard:
            world.wait_all_running(botyard, ["questionnaire"])
            for user in users:
                world.say("questionnaire", user, "/start")
            for user in users:
                assert world.reply("questionnaire", user) == QUESTIONS[0]
            # The reply goes out inside the handler; the state is written when it returns.
            deadline = time.monotonic() + 30
            while len(world.records("questionnaire")) < len(users):
                assert time.monotonic() < deadline, "the /start states were never written"
                time.sleep(0.05)

            gate.unlink()  # the next answers are replied to, then wait with their writes
            for user in flushing:
                world.say("questionnaire", user, f"blue {user}")
            for user in flushing:
                assert world.reply("questionnaire", user) == QUESTIONS[1]
            server.stop()
            gate.touch()
            botyard.wait_for_log(r"storing them again", count=len(flushing), timeout=60)
            answers = [world.say("questionnaire", user, f"blue {user}") for user in reading]
            botyard.wait_for_log(rf"update={answers[0]['update_id']} failed with \w+", timeout=60)
            pending = [u["update_id"] for u in emulator.pending_updates(token)]
            assert answers[0]["update_id"] in pending, "nothing confirmed before it is safe"
            server.start()

            for user in reading:
                assert world.reply("questionnaire", user, timeout=90) == QUESTIONS[1]
            for step, answer in ((2, "cat"), (3, "soup")):
                for user in users:
                    world.say("questionnaire", user, f"{answer} {user}")
                for user in users:
                    expected = QUESTIONS[step] if step < 3 else THANKS
                    assert world.reply("questionnaire", user, timeout=60) == expected
            assert botyard.stop() == 0
        records = world.records("questionnaire")
        saved = world.answers("questionnaire")
        for user in users:
            sent = [m["text"] for m in emulator.sent_messages(token, user)]
            assert sent == [*QUESTIONS, THANKS], f"user {user}: a reply repeated or lost"
            assert saved[user] == [
                {"q1": f"blue {user}", "q2": f"cat {user}", "q3": f"soup {user}"}
            ], f"user {user}: the completed answers, saved once"
            assert user not in records, "a completed questionnaire leaves no FSM state"
    finally:
        server.stop()
