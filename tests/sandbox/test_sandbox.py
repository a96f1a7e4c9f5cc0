"""``botyard sandbox`` over HTTP: the JSON API, the live stream, bad input, reload, the CLI.

The sandbox runs in the test's event loop against the test database; the
command-line tests run ``botyard sandbox`` as a subprocess, as a user would.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pymongo import AsyncMongoClient

from botyard.database.embedded import free_port
from botyard.sandbox import Sandbox
from botyard.sandbox.transcripts import TRANSCRIPTS
from botyard.storage import COLLECTION_NAME
from botyard.tokens import redact

from e2e import QUESTIONS, THANKS, BotyardProcess, copy_example_bots
from sandbox_helpers import (
    COUNTER_BOT,
    FAILING_BOT,
    example_registry,
    sandbox_process,
    wait_until,
)

#: Looks like a real token; the sandbox must never send it anywhere.
FILE_TOKEN = "123456789:AAHfakefakefakefakefakefakefakefake1"


def registry_text(mongo_uri: str, database: str, extra_bots: str = "") -> str:
    return (
        "storage:\n"
        f"  uri: {mongo_uri}\n"
        f"  database: {database}\n"
        "bots:\n"
        "  - name: questionnaire\n"
        "    token: ${QUESTIONNAIRE_TOKEN_NOT_SET}\n"
        "    routers: [bots.questionnaire:router]\n"
        "  - name: echo\n"
        f"    token: {FILE_TOKEN}\n"
        "    routers: [bots.echo:router]\n"
        "    api_server: http://127.0.0.1:9\n"
        "  - name: counter\n"
        "    routers: [sandbox_counter:router]\n"
        "  - name: dormant\n"
        "    enabled: false\n"
        "    routers: [bots.echo:router]\n"
        f"{extra_bots}"
    )


class Client:
    """The sandbox's JSON API, as a browser or a script reaches it."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url.rstrip("/")

    async def call(self, method: str, path: str, body: Any = None, raw: str | None = None) -> Any:
        """The JSON answer; raises ``AssertionError`` with the error for a non-2xx answer."""
        status, payload = await self.request(method, path, body, raw)
        assert status < 300, f"{method} {path} -> {status}: {payload}"
        return payload

    async def request(
        self, method: str, path: str, body: Any = None, raw: str | None = None
    ) -> tuple[int, Any]:
        data = raw if raw is not None else (None if body is None else json.dumps(body))
        headers = {"Content-Type": "application/json"} if method == "POST" else {}
        async with self.session.request(
            method, self.url + path, data=data, headers=headers
        ) as response:
            text = await response.text()
            try:
                return response.status, json.loads(text)
            except ValueError:
                return response.status, text

    async def say(self, bot: str, user: int, text: str) -> dict[str, Any]:
        """Send a message and return the chat once the bot replied and finished handling."""
        sent = await self.call("POST", f"/api/bots/{bot}/users/{user}/messages", {"text": text})
        chat: dict[str, Any] = await self.call(
            "GET", f"/api/bots/{bot}/users/{user}/chat?wait=30&after={sent['message_id']}"
        )
        return chat

    async def bots(self) -> dict[str, dict[str, Any]]:
        return {bot["name"]: bot for bot in (await self.call("GET", "/api/bots"))["bots"]}


async def eventually(
    read: Callable[[], Awaitable[Any]], check: Callable[[Any], bool], timeout: float = 30.0
) -> Any:
    """Re-read until ``check`` holds; fail with the last value read."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await read()
        if check(value):
            return value
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s; last value: {value}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def sandbox(
    tmp_path: Path, mongo_uri: str, database_name: str
) -> AsyncIterator[tuple[Sandbox, Client]]:
    copy_example_bots(tmp_path)
    (tmp_path / "sandbox_counter.py").write_text(COUNTER_BOT)
    (tmp_path / "botyard.yaml").write_text(registry_text(mongo_uri, database_name))
    async with (
        Sandbox(tmp_path / "botyard.yaml", port=0) as running,
        aiohttp.ClientSession() as session,
    ):
        client = Client(session, running.url)
        await eventually(
            client.bots,
            lambda bots: all(bots[n]["status"] == "running" for n in ("questionnaire", "echo")),
        )
        yield running, client


async def test_two_users_fill_in_the_questionnaire_interleaved_and_stay_apart(
    sandbox: tuple[Sandbox, Client], mongo_uri: str, database_name: str
) -> None:
    _, client = sandbox
    alice, bob = 1001, 1002
    chat = await client.say("questionnaire", alice, "/start")
    assert chat["messages"][-1]["text"] == QUESTIONS[0]
    assert chat["fsm"]["state"] == "Questionnaire:q1"
    await client.say("questionnaire", bob, "/start")
    await client.say("questionnaire", alice, "red")
    chat = await client.say("questionnaire", bob, "cat")
    assert chat["fsm"] == {**chat["fsm"], "state": "Questionnaire:q2", "data": {"q1": "cat"}}
    await client.say("questionnaire", alice, "dog")
    chat = await client.say("questionnaire", alice, "pizza")
    assert [m["text"] for m in chat["messages"] if m["from"] == "bot"] == [*QUESTIONS, THANKS]
    assert chat["fsm"] == {**chat["fsm"], "state": None, "data": {}, "stored": False}
    chat = await eventually(  # the sandbox shows the document the bot saved
        lambda: client.call("GET", "/api/bots/questionnaire/users/1001/chat"),
        lambda c: c["documents"] != [],
    )
    [saved] = chat["documents"]
    assert saved["collection"] == "questionnaire_answers"
    assert saved["document"] == {
        **saved["document"],
        "bot_id": (await client.bots())["questionnaire"]["bot_id"],
        "user_id": alice,
        "chat_id": alice,
        "answers": {"q1": "red", "q2": "dog", "q3": "pizza"},
    }
    assert (await client.call("GET", "/api/bots/echo/users/1001/chat"))["documents"] == []
    bob_chat = await client.call("GET", "/api/bots/questionnaire/users/1002/chat")
    assert [m["text"] for m in bob_chat["messages"]] == [
        "/start",
        QUESTIONS[0],
        "cat",
        QUESTIONS[1],
    ]
    assert bob_chat["fsm"]["data"] == {"q1": "cat"}

    bots = await client.bots()
    assert bots["questionnaire"]["handled"] == 6
    assert bots["questionnaire"]["errors"] == 0
    assert bots["questionnaire"]["fsm_records"] == 1, "Alice's finished: her record is gone"

    reset = await client.call("POST", "/api/bots/questionnaire/users/1002/reset")
    assert reset == {**reset, "state": None, "data": {}, "stored": False}
    client_db: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri)
    try:
        records = client_db[database_name][COLLECTION_NAME]
        assert await records.count_documents({"namespace": "questionnaire"}) == 0
    finally:
        await client_db.close()
    bots = await eventually(client.bots, lambda b: b["questionnaire"]["fsm_records"] == 0)
    chat = await client.say("questionnaire", bob, "/start")
    assert chat["messages"][-1]["text"] == QUESTIONS[0], "after a reset /start begins again"


async def test_tokens_of_the_file_are_never_used_and_no_page_shows_a_token(
    sandbox: tuple[Sandbox, Client],
) -> None:
    running, client = sandbox
    chat = await client.say("echo", 1003, "hello there")
    assert [m["text"] for m in chat["messages"]] == ["hello there", "hello there"]
    generated = {bot.token for bot in running.emulator.bots}
    assert FILE_TOKEN not in generated
    assert len(generated) == 3, "questionnaire, echo and counter run; dormant is disabled"
    assert running.supervisor is not None
    for config in running.supervisor.registry.bots:
        assert config.api_server == running.emulator.url
    seen = [
        json.dumps(await client.call("GET", "/api/bots")),
        json.dumps(await client.call("GET", "/api/bots/echo/users/1003/chat")),
    ]
    async with client.session.get(client.url + "/api/stream?bot=echo&user=1003") as response:
        seen.append((await response.content.readuntil(b"\n\n")).decode())
    for text in seen:
        assert redact(text) == text
        assert not any(token in text for token in (*generated, FILE_TOKEN))


async def test_inline_buttons_edit_the_message_in_place(sandbox: tuple[Sandbox, Client]) -> None:
    _, client = sandbox
    chat = await client.say("counter", 1001, "/start")
    shown = chat["messages"][-1]
    assert shown["text"] == "Count: 0"
    assert shown["buttons"] == [
        [{"text": "+1", "callback_data": "inc"}, {"text": "Done", "callback_data": "done"}]
    ]
    path = "/api/bots/counter/users/1001"
    for _ in range(2):
        await client.call(
            "POST", f"{path}/buttons", {"message_id": shown["message_id"], "callback_data": "inc"}
        )
    chat = await eventually(
        lambda: client.call("GET", f"{path}/chat"),
        lambda c: c["messages"][-1]["text"] == "Count: 2" and c["fsm"]["data"] == {"count": 2},
    )
    edited = chat["messages"][-1]
    assert len(chat["messages"]) == 2, "the button edits the bot's message, it sends none"
    assert edited["message_id"] == shown["message_id"]
    assert edited["edited"] is True
    assert edited["previous_texts"] == ["Count: 0", "Count: 1"]
    assert chat["callback_answer"] == {"show_alert": False, "text": "now 2"}

    status, answer = await client.request(
        "POST", f"{path}/buttons", {"message_id": shown["message_id"], "callback_data": "nope"}
    )
    assert status == 400
    assert "no button with callback_data 'nope'" in answer["error"]
    status, answer = await client.request(
        "POST", f"{path}/buttons", {"message_id": 99, "callback_data": "inc"}
    )
    assert status == 400
    assert "sent no message 99" in answer["error"]
    status, answer = await client.request("POST", f"{path}/buttons", {"message_id": "2"})
    assert (status, answer) == (
        400,
        {"error": "'message_id' is required: the bot message's id, an integer"},
    )
    await client.call(
        "POST", f"{path}/buttons", {"message_id": shown["message_id"], "callback_data": "done"}
    )
    chat = await eventually(
        lambda: client.call("GET", f"{path}/chat"),
        lambda c: c["messages"][-1]["text"] == "Final count: 2" and not c["fsm"]["stored"],
    )
    assert chat["messages"][-1]["buttons"] == []
    bots = await client.bots()
    assert bots["counter"]["handled"] == 4
    assert bots["counter"]["errors"] == 0


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "error"),
    [
        (
            "POST",
            "/api/bots/nobody/users/1001/messages",
            '{"text": "hi"}',
            404,
            "no bot named 'nobody' in botyard.yaml (bots: questionnaire, echo, counter, dormant)",
        ),
        (
            "POST",
            "/api/bots/echo/users/42/messages",
            '{"text": "hi"}',
            404,
            "no simulated user '42' (users: 1001 (Alice), 1002 (Bob), 1003 (Carol))",
        ),
        ("GET", "/api/bots/echo/users/alice/chat", None, 404, "no simulated user 'alice'"),
        ("POST", "/api/bots/echo/users/1001/messages", '{"text": " \\n "}', 400, "empty message"),
        ("POST", "/api/bots/echo/users/1001/messages", '{"text": 5}', 400, "'text' is required"),
        ("POST", "/api/bots/echo/users/1001/messages", '{"text": "\\ud800"}', 400, "surrogate"),
        (
            "POST",
            "/api/bots/echo/users/1001/messages",
            json.dumps({"text": "x" * 4097}),
            400,
            "at most 4096 characters; this one has 4097",
        ),
        ("POST", "/api/bots/echo/users/1001/messages", "{not json", 400, "must be a JSON object"),
        ("POST", "/api/bots/echo/users/1001/messages", "[1]", 400, "must be a JSON object"),
        (
            "POST",
            "/api/bots/dormant/users/1001/messages",
            '{"text": "hi"}',
            409,
            "bot 'dormant' is disabled",
        ),
        ("GET", "/api/bots/echo/users/1001/chat?wait=soon", None, 400, "'wait' must be"),
        ("GET", "/api/bots/echo/users/1001/chat?wait=1&after=x", None, 400, "'after' must be"),
        ("POST", "/api/users", '{"first_name": ""}', 400, "'first_name' is required"),
        ("GET", "/api/nothing", None, 404, "GET /api/nothing is not part of the API"),
        ("DELETE", "/api/bots", None, 405, "DELETE /api/bots is not part of the API"),
    ],
)
async def test_bad_input_gets_a_message_naming_the_problem(
    sandbox: tuple[Sandbox, Client],
    method: str,
    path: str,
    body: str | None,
    status: int,
    error: str,
) -> None:
    _, client = sandbox
    answer_status, answer = await client.request(method, path, raw=body)
    assert answer_status == status
    assert error in answer["error"]
    chat = await client.say("echo", 1001, "still alive")
    assert chat["messages"][-1]["text"] == "still alive", "nothing crashed"


async def test_a_post_that_is_not_json_is_refused(sandbox: tuple[Sandbox, Client]) -> None:
    """A form or text/plain POST, which any web site can make a browser send, does nothing."""
    running, client = sandbox
    url = client.url + "/api/bots/echo/users/1001/messages"
    for data in ('{"text": "hi"}', b'{"text": "hi"}', {"text": "hi"}):  # text, bytes, a form
        async with client.session.post(url, data=data) as response:
            assert response.status == 415
            assert "Content-Type: application/json" in (await response.json())["error"]
    echo = running.emulated(running.bot("echo"))
    assert echo is not None
    assert echo.chats == {}, "nothing reached the bot"


async def test_page_urls_naming_unknown_bots_or_users_answer_404_with_the_page(
    sandbox: tuple[Sandbox, Client],
) -> None:
    _, client = sandbox
    for path, status in [
        ("/", 200),
        ("/bots/echo", 200),
        ("/bots/echo/users/1002", 200),
        ("/bots/ghost/users/1002", 404),
        ("/bots/echo/users/77", 404),
        ("/static/app.js", 200),
        ("/static/style.css", 200),
    ]:
        async with client.session.get(client.url + path) as response:
            assert response.status == status, path
            text = await response.text()
            if not path.startswith("/static"):
                assert "<title>botyard sandbox</title>" in text
    async with client.session.get(client.url + "/api/stream?bot=ghost&user=1001") as response:
        events = await read_events(response, {"bots", "problem"})
    assert "no bot named 'ghost'" in events["problem"]["error"]
    assert [bot["name"] for bot in events["bots"]["bots"]] == [
        "questionnaire",
        "echo",
        "counter",
        "dormant",
    ]


async def read_events(response: aiohttp.ClientResponse, wanted: set[str]) -> dict[str, Any]:
    """Read server-sent events until each kind in ``wanted`` arrived (at least one event);
    the latest of each kind."""
    events: dict[str, Any] = {}
    async with asyncio.timeout(30):
        while not events or not wanted <= events.keys():
            block = (await response.content.readuntil(b"\n\n")).decode()
            fields = dict(
                line.split(": ", 1) for line in block.strip().splitlines() if ": " in line
            )
            if "event" in fields:
                events[fields["event"]] = json.loads(fields["data"])
    return events


async def test_the_stream_pushes_replies_state_and_counters(
    sandbox: tuple[Sandbox, Client],
) -> None:
    _, client = sandbox
    url = client.url + "/api/stream?bot=questionnaire&user=1002"
    async with client.session.get(url) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        first = await read_events(response, {"bots", "chat"})
        assert first["chat"]["messages"] == []
        await client.call("POST", "/api/bots/questionnaire/users/1002/messages", {"text": "/start"})
        latest = dict(first)

        def records() -> int:
            return int(
                {b["name"]: b for b in latest["bots"]["bots"]}["questionnaire"]["fsm_records"]
            )

        async with asyncio.timeout(30):
            while latest["chat"]["fsm"]["state"] != "Questionnaire:q1" or records() != 1:
                latest.update(await read_events(response, set()))
        assert [m["text"] for m in latest["chat"]["messages"]] == ["/start", QUESTIONS[0]]


async def test_users_can_be_added(sandbox: tuple[Sandbox, Client]) -> None:
    _, client = sandbox
    dave = await client.call("POST", "/api/users", {"first_name": "Dave"})
    assert dave == {"id": 1004, "is_bot": False, "first_name": "Dave", "language_code": "en"}
    users = (await client.call("GET", "/api/users"))["users"]
    assert [user["first_name"] for user in users] == ["Alice", "Bob", "Carol", "Dave"]
    chat = await client.say("echo", 1004, "hi from Dave")
    assert chat["user"]["first_name"] == "Dave"
    assert chat["messages"][-1] == {**chat["messages"][-1], "from": "bot", "text": "hi from Dave"}


async def test_a_revoked_bot_shows_unauthorized_while_the_others_answer(
    sandbox: tuple[Sandbox, Client],
) -> None:
    running, client = sandbox
    bots = await client.bots()
    username = bots["echo"]["username"]
    async with client.session.post(
        f"{running.emulator.url}/_emulator/bots/{username}/revoke"
    ) as response:
        assert response.status == 200
    bots = await eventually(client.bots, lambda b: b["echo"]["status"] == "unauthorized")
    assert bots["echo"]["revoked"] is True
    assert "rejected the token" in bots["echo"]["detail"]
    assert {name: bot["status"] for name, bot in bots.items()} == {
        "questionnaire": "running",
        "echo": "unauthorized",
        "counter": "running",
        "dormant": "disabled",
    }
    chat = await client.say("questionnaire", 1003, "/start")
    assert chat["messages"][-1]["text"] == QUESTIONS[0]
    status, answer = await client.request(
        "POST", "/api/bots/echo/users/1001/messages", {"text": "anyone there?"}
    )
    assert status == 409
    assert "echo's token was revoked" in answer["error"]
    chat = await client.call("GET", "/api/bots/echo/users/1001/chat")
    assert "echo's token was revoked" in chat["problem"]


async def test_editing_the_registry_changes_the_bot_list(
    sandbox: tuple[Sandbox, Client],
    tmp_path: Path,
    mongo_uri: str,
    database_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    running, client = sandbox
    assert running.supervisor is not None
    questionnaire = running.supervisor.runners["questionnaire"]
    added = "  - name: parrot\n    token: ${PARROT_TOKEN}\n    routers: [bots.echo:router]\n"
    text = registry_text(mongo_uri, database_name, added).replace(
        "  - name: counter\n    routers: [sandbox_counter:router]\n", ""
    )
    (tmp_path / "botyard.yaml").write_text(text)
    bots = await eventually(
        client.bots, lambda b: "counter" not in b and b.get("parrot", {}).get("status") == "running"
    )
    assert list(bots) == ["questionnaire", "echo", "dormant", "parrot"]
    assert running.supervisor.runners["questionnaire"] is questionnaire, "unchanged: not restarted"
    chat = await client.say("parrot", 1001, "polly")
    assert chat["messages"][-1]["text"] == "polly"
    status, answer = await client.request("GET", "/api/bots/counter/users/1001/chat")
    assert status == 404
    assert "no bot named 'counter'" in answer["error"]

    (tmp_path / "botyard.yaml").write_text("bots: [\n")
    await eventually(lambda: asyncio.sleep(0, caplog.text), lambda log: "reload rejected" in log)
    assert list(await client.bots()) == ["questionnaire", "echo", "dormant", "parrot"]
    chat = await client.say("parrot", 1001, "still here")
    assert chat["messages"][-1]["text"] == "still here"
    rejected = await client.call("GET", "/api/bots")
    assert "botyard.yaml" in rejected["reload_rejected"]
    assert "not valid YAML" in rejected["reload_rejected"]

    broken = "  - name: broken\n    routers: [bots.missing:router]\n"
    (tmp_path / "botyard.yaml").write_text(text + broken)
    bots = await eventually(client.bots, lambda b: "broken" in b)
    assert bots["broken"]["status"] == "not_running"
    assert "could not start: " in bots["broken"]["detail"]
    assert "cannot import bots.missing" in bots["broken"]["detail"]
    assert (await client.call("GET", "/api/bots"))["reload_rejected"] is None
    chat = await client.call("GET", "/api/bots/broken/users/1001/chat")
    assert "broken could not start: " in chat["problem"]
    status, answer = await client.request(
        "POST", "/api/bots/broken/users/1001/messages", {"text": "hi"}
    )
    assert status == 409
    assert "cannot import bots.missing" in answer["error"]


FAILING = "  - name: failing\n    routers: [sandbox_failing:router]\n"


def write_registry(folder: Path, mongo_uri: str, database: str, extra_bots: str = "") -> Path:
    copy_example_bots(folder)
    (folder / "sandbox_counter.py").write_text(COUNTER_BOT)
    (folder / "sandbox_failing.py").write_text(FAILING_BOT)
    path = folder / "botyard.yaml"
    path.write_text(registry_text(mongo_uri, database, extra_bots))
    return path


async def running_bots(client: Client, *names: str) -> dict[str, dict[str, Any]]:
    return await eventually(  # type: ignore[no-any-return]
        client.bots, lambda bots: all(bots[n]["status"] == "running" for n in names)
    )


async def test_a_failing_handler_is_shown_in_the_chat_and_a_reset_is_marked(
    tmp_path: Path, mongo_uri: str, database_name: str
) -> None:
    registry = write_registry(tmp_path, mongo_uri, database_name, FAILING)
    async with (
        Sandbox(registry, port=0) as running,
        aiohttp.ClientSession() as session,
    ):
        client = Client(session, running.url)
        await running_bots(client, "failing", "questionnaire")
        await client.say("failing", 1002, "7")
        chat = await eventually(
            lambda: client.call("GET", "/api/bots/failing/users/1002/chat"),
            lambda c: len(c["messages"]) == 3,
        )
        user, reply, failure = chat["messages"]
        assert (user["from"], reply["text"]) == ("user", "about to fail on 7")
        assert failure == {
            **failure,
            "from": "sandbox",
            "kind": "failure",
            "text": "the handler failed: ZeroDivisionError: cannot divide 7 by zero",
        }
        assert "Traceback (most recent call last)" in failure["details"]
        assert 'raise ZeroDivisionError(f"cannot divide {text} by zero")' in (failure["details"])
        assert (await client.bots())["failing"]["errors"] == 1
        other = await client.call("GET", "/api/bots/failing/users/1001/chat")
        assert other["messages"] == [], "only the chat where it happened"

        await client.say("questionnaire", 1001, "/start")
        await client.call("POST", "/api/bots/questionnaire/users/1001/reset")
        chat = await client.say("questionnaire", 1001, "/start")
        assert [(m["from"], m.get("kind"), m["text"]) for m in chat["messages"]] == [
            ("user", None, "/start"),
            ("bot", None, QUESTIONS[0]),
            (
                "sandbox",
                "reset",
                "FSM state and data reset: the bot starts this conversation afresh",
            ),
            ("user", None, "/start"),
            ("bot", None, QUESTIONS[0]),
        ]


async def test_the_transcripts_and_added_users_survive_a_restart(
    tmp_path: Path, mongo_uri: str, database_name: str
) -> None:
    registry = write_registry(tmp_path, mongo_uri, database_name)
    async with Sandbox(registry, port=0) as first, aiohttp.ClientSession() as session:
        client = Client(session, first.url)
        await running_bots(client, "questionnaire", "counter")
        dave = await client.call("POST", "/api/users", {"first_name": "Dave"})
        await client.say("questionnaire", dave["id"], "/start")
        await client.say("questionnaire", dave["id"], "red")
        await client.say("counter", 1001, "/start")
        before = await client.call("GET", f"/api/bots/questionnaire/users/{dave['id']}/chat")
        await eventually(  # saved as it changes
            lambda: first.database[TRANSCRIPTS].count_documents({}),  # type: ignore[index]
            lambda count: count == 2,
        )
    async with Sandbox(registry, port=0) as second, aiohttp.ClientSession() as session:
        client = Client(session, second.url)
        await running_bots(client, "questionnaire", "counter")
        users = await eventually(
            lambda: client.call("GET", "/api/users"), lambda u: len(u["users"]) == 4
        )
        assert users["users"][-1] == dave
        chat = await client.call("GET", f"/api/bots/questionnaire/users/{dave['id']}/chat")
        assert [(m["from"], m["text"]) for m in chat["messages"]] == [
            ("user", "/start"),
            ("bot", QUESTIONS[0]),
            ("user", "red"),
            ("bot", QUESTIONS[1]),
        ]
        assert all(m["earlier"] and m["message_id"] is None for m in chat["messages"])
        assert chat["fsm"]["state"] == before["fsm"]["state"] == "Questionnaire:q2"
        chat = await client.say("questionnaire", dave["id"], "cat")
        assert [m["text"] for m in chat["messages"][-2:]] == ["cat", QUESTIONS[2]]
        assert chat["messages"][-1]["message_id"] == 2, "this run's emulator numbers anew"
        counter = await client.call("GET", "/api/bots/counter/users/1001/chat")
        assert counter["messages"][-1]["buttons"] == [[{"text": "+1"}, {"text": "Done"}]], (
            "an earlier run's buttons cannot be pressed"
        )


async def test_while_stopping_the_page_keeps_the_last_values(
    sandbox: tuple[Sandbox, Client],
) -> None:
    running, client = sandbox
    await client.say("questionnaire", 1001, "/start")
    shown = await client.bots()
    chat = await client.call("GET", "/api/bots/questionnaire/users/1001/chat")
    running.request_stop()
    stopping = await client.call("GET", "/api/bots")
    assert stopping["storage"] == "stopping"
    assert {bot["name"]: bot["status"] for bot in stopping["bots"]} == dict.fromkeys(
        shown, "stopping"
    )
    assert [bot["handled"] for bot in stopping["bots"]] == [b["handled"] for b in shown.values()]
    during = await client.call("GET", "/api/bots/questionnaire/users/1001/chat")
    assert during["fsm"] == chat["fsm"]
    assert during["fsm"]["state"] == "Questionnaire:q1"


# --- the command line ----------------------------------------------------------------


def http_json(method: str, url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@pytest.mark.e2e
def test_botyard_sandbox_runs_the_example_registry_on_the_embedded_database(
    tmp_path: Path, database_name: str
) -> None:
    """The README's command on the repository's example registry, as a script drives it:
    no token and no MONGODB_URI set, so the embedded database starts."""
    registry = example_registry(tmp_path, database_name)
    env = {"MONGODB_URI": "", "QUESTIONNAIRE_TOKEN": FILE_TOKEN}
    with sandbox_process(registry, env) as (process, url):
        assert url.startswith("http://127.0.0.1:")
        bots_url = url + "api/bots"
        chat_url = url + "api/bots/questionnaire/users/1001"
        sent = http_json("POST", chat_url + "/messages", {"text": "/start"})
        chat = http_json("GET", f"{chat_url}/chat?wait=60&after={sent['message_id']}")
        assert chat["messages"][-1]["text"] == QUESTIONS[0]
        assert chat["fsm"]["state"] == "Questionnaire:q1"
        running = dict.fromkeys(["registration", "questionnaire", "echo", "counter"], "running")
        wait_until(  # an idle bot runs once its first long poll was not rejected for 1 s
            lambda: (
                {bot["name"]: bot["status"] for bot in http_json("GET", bots_url)["bots"]}
                == running
            ),
            what="every bot running",
        )
        assert (tmp_path / ".botyard" / "data").is_dir()
        process.signal(signal.SIGTERM)
        assert process.wait(60) == 0, process.output
    output = process.output
    assert "storage.uri is not set: using an embedded SecantusDB" in output
    assert FILE_TOKEN not in output
    assert redact(output) == output, "no token-shaped string in the log"


@pytest.mark.e2e
def test_binding_beyond_loopback_needs_allow_remote_and_warns(
    tmp_path: Path, mongo_uri: str, database_name: str
) -> None:
    registry = example_registry(tmp_path, database_name)
    env = {"MONGODB_URI": mongo_uri}
    refused = run_to_exit(registry, env, "--host", "0.0.0.0")
    assert refused.process is not None
    assert refused.process.returncode == 2
    assert "--host 0.0.0.0 would let other machines" in refused.output
    assert "--allow-remote" in refused.output

    port = free_port()
    with sandbox_process(
        registry, env, "--host", "0.0.0.0", "--port", str(port), "--allow-remote"
    ) as (process, url):
        assert re.search(r"warning: the sandbox listens on 0\.0\.0\.0", process.output)
        assert url == f"http://0.0.0.0:{port}/"
        assert http_json("GET", f"http://127.0.0.1:{port}/api/users")["users"][0]["id"] == 1001
        assert process.stop() == 0


@pytest.mark.e2e
def test_a_taken_port_and_an_invalid_registry_are_one_line_errors(
    tmp_path: Path, mongo_uri: str, database_name: str
) -> None:
    registry = example_registry(tmp_path, database_name)
    env = {"MONGODB_URI": mongo_uri}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_to_exit(registry, env, "--port", str(port))
    assert result.process is not None
    assert result.process.returncode == 1
    assert f"error: cannot serve the sandbox on 127.0.0.1:{port}" in result.output
    assert "Traceback" not in result.output

    registry.write_text(registry.read_text().replace("bots.echo:router", "bots.missing:router"))
    result = run_to_exit(registry, env)
    assert result.process is not None
    assert result.process.returncode == 1
    assert "error: invalid registry" in result.output
    assert "cannot import bots.missing" in result.output
    assert "Traceback" not in result.output


def run_to_exit(registry: Path, env: dict[str, str], *args: str) -> BotyardProcess:
    """``botyard sandbox`` for a command line that must exit by itself."""
    process = BotyardProcess(["sandbox", str(registry), *args], env=env, cwd=registry.parent)
    with process:
        process.wait(120)
    return process
