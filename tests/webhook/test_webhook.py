"""Webhook mode in-process: secrets, rejections, the journal, round trips, rotation."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pymongo import AsyncMongoClient, MongoClient
from pymongo.errors import AutoReconnect

from botyard.cli import main
from botyard.database.documents import utcnow
from botyard.emulator import BotAPIEmulator
from botyard.ops.http_server import server_address
from botyard.registry.loader import load_registry
from botyard.runtime.supervisor import Supervisor
from botyard.webhook import journal as journal_module
from botyard.webhook.endpoint import MAX_BODY_BYTES, SECRET_HEADER, WebhookEndpoint
from botyard.webhook.journal import JOURNAL_COLLECTION, Recorded, UpdateJournal
from botyard.webhook.secrets import SECRETS_COLLECTION, SecretStore

from mongo_faults import Faulty
from webhook_harness import Yard, open_yard, silence, wait_until


@pytest.fixture
async def yard(
    tmp_path: Path, bot_api: BotAPIEmulator, mongo_uri: str, database_name: str
) -> AsyncIterator[Yard]:
    async with open_yard(tmp_path, bot_api, mongo_uri, database_name) as opened:
        yield opened


def webhook_of(yard: Yard, bot: str) -> tuple[str, str]:
    """The bot's webhook path on our server, and its secret token, as Telegram has them."""
    webhook = yard.emulator.bot(yard.tokens[bot]).webhook
    assert webhook.secret_token is not None
    assert webhook.url.startswith(yard.url)
    return webhook.url.removeprefix(yard.url), webhook.secret_token


async def test_set_webhook_uses_a_secret_path_and_token_never_the_bot_token(yard: Yard) -> None:
    token = yard.add("shop")
    yard.write(max_connections=7)
    await yard.start()
    info = yard.emulator.webhook_info(token)
    assert info["url"].startswith(yard.url + "/webhook/shop/")
    assert token not in info["url"]
    assert token.split(":")[1] not in info["url"]
    assert info["max_connections"] == 7
    assert yard.emulator.bot(token).allowed_updates == ["message"], "from the bot's routers"
    stored = await yard.supervisor.webhooks.secret_store.current(["shop"])  # type: ignore[union-attr]
    assert info["url"].endswith("/" + stored["shop"].path)
    assert yard.emulator.bot(token).webhook.secret_token == stored["shop"].token
    assert len(stored["shop"].token) >= 32
    assert stored["shop"].path != stored["shop"].token


async def test_bad_requests_are_rejected_and_nothing_is_handled(yard: Yard) -> None:
    token = yard.add("shop")
    yard.write()
    supervisor = await yard.start()
    path, secret = webhook_of(yard, "shop")
    update = json.dumps({"update_id": 10, "message": {"message_id": 1, "date": 0, "chat": {}}})
    good = {SECRET_HEADER: secret, "Content-Type": "application/json"}

    wrong_secret = await yard.request("POST", path, data=update, headers={SECRET_HEADER: "x"})
    no_secret = await yard.request("POST", path, data=update)
    unknown_bot = await yard.request("POST", "/webhook/nobody/abc", data=update, headers=good)
    wrong_path = await yard.request("POST", "/webhook/shop/guessed", data=update, headers=good)
    garbage = await yard.request("POST", path, data=b"\x00not json{", headers=good)
    not_update = await yard.request("POST", path, data=b'["update_id"]', headers=good)
    no_id = await yard.request("POST", path, data=b'{"update_id": "1"}', headers=good)
    oversized_body = b'{"update_id": 11, "pad": "' + b"x" * MAX_BODY_BYTES + b'"}'
    oversized = await yard.request("POST", path, data=oversized_body, headers=good)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the read limit catches it
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b" " * 65536

    oversized_chunked = await yard.request("POST", path, data=chunks(), headers=good)

    assert wrong_secret[0] == 401
    assert no_secret[0] == 401
    assert unknown_bot[0] == 404
    assert wrong_path[0] == 404
    assert garbage[0] == 400
    assert "not JSON" in garbage[1]
    assert not_update[0] == 400
    assert no_id[0] == 400
    assert oversized[0] == 400
    assert oversized_chunked[0] == 400
    runner = supervisor.runners["shop"]
    assert runner.counters.received == 0
    assert await yard.collection_count(JOURNAL_COLLECTION) == 0
    assert yard.emulator.sent_messages(token) == []
    sample = supervisor.metrics.registry.get_sample_value
    requests = "botyard_webhook_requests_total"
    assert sample(requests, {"bot": "shop", "outcome": "unauthorized"}) == 2
    assert sample(requests, {"bot": "shop", "outcome": "bad_request"}) == 5
    assert sample("botyard_webhook_unknown_path_requests_total") == 2

    # the real thing still gets through, delivered by the emulator
    yard.emulator.send_message(token, 1, "hello")
    assert (await yard.emulator.wait_for_reply(token, 1))["text"] == "hello"
    await wait_until(lambda: runner.counters.handled == 1)
    assert runner.counters.received == 1


async def test_round_trips_per_webhook_update(yard: Yard) -> None:
    """Journal insert + the FSM's own round trips + the (batched) journal delete."""
    token = yard.add("shop")
    yard.write()
    supervisor = await yard.start(heartbeat_interval=3600.0)
    counter = supervisor.metrics.round_trips
    await wait_until(lambda: supervisor.metrics.fsm_sampled_at is not None)

    async def one(text: str, user: int) -> dict[str, int]:
        counter.reset()
        yard.emulator.send_message(token, user, text)
        await yard.emulator.wait_for_reply(token, user)
        await wait_until(lambda: counter.commands["delete"] == 1)
        return dict(counter.commands)

    read_only = await one("hello", 1)
    state_changing = await one("remember", 2)
    assert read_only == {"insert": 1, "find": 1, "delete": 1}
    assert state_changing == {"insert": 1, "find": 1, "update": 1, "delete": 1}
    assert await yard.collection_count(JOURNAL_COLLECTION) == 0


async def test_journaled_updates_of_a_dead_process_are_handled_at_start(
    yard: Yard, mongo_uri: str, database_name: str
) -> None:
    """What a crashed process accepted (answered 200) but never handled is not lost."""
    token = yard.add("shop")
    yard.write()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    try:
        crashed = UpdateJournal(client[database_name])
        crashed.instance = "crashed-host:1:dead"
        for text in ("first", "second"):
            update = yard.emulator.send_message(token, 42, text)
            assert await crashed.record("shop", update["update_id"], update) is Recorded.ACCEPTED
        await silence(crashed)
        first_id = update["update_id"] - 1
        yard.emulator.bot(token).drop_pending()  # Telegram got its 200 for both
        again = await crashed.record("shop", first_id, {})
        assert again is Recorded.DUPLICATE, "a redelivery is known"
    finally:
        await client.close()
    await yard.start()
    await wait_until(lambda: len(yard.emulator.sent_messages(token, 42)) == 2)
    assert [m["text"] for m in yard.emulator.sent_messages(token, 42)] == ["first", "second"]
    await wait_until(lambda: yard.supervisor.runners["shop"].executor.pending == 0)  # type: ignore[union-attr]
    assert await yard.stop() == 0
    assert await yard.collection_count(JOURNAL_COLLECTION) == 0


async def test_a_gone_process_s_waiting_polled_updates_are_taken_over(
    yard: Yard, mongo_uri: str, database_name: str
) -> None:
    """A polling bot's updates journaled (and confirmed) by a replica that died are handled."""
    token = yard.add("shop", mode="polling")
    yard.write(webhook=False)
    supervisor = await yard.start(heartbeat_interval=0.2)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    try:
        gone = UpdateJournal(client[database_name])
        gone.instance = "other-host:1:gone"
        update = yard.emulator.send_message(token, 43, "left behind")
        yard.emulator.bot(token).drop_pending()  # the gone replica had confirmed past it
        await gone.park("shop", [(update["update_id"], update)])
        await silence(gone)
    finally:
        await client.close()
    assert (await yard.emulator.wait_for_reply(token, 43))["text"] == "left behind"
    await wait_until(lambda: supervisor.runners["shop"].counters.handled == 1)
    assert await yard.stop() == 0
    assert await yard.collection_count(JOURNAL_COLLECTION) == 0
    assert [m["text"] for m in yard.emulator.sent_messages(token, 43)] == ["left behind"]


async def test_polling_bots_with_nothing_journaled_cost_one_read_per_heartbeat(
    yard: Yard, mongo_uri: str, database_name: str
) -> None:
    """No webhook bot and an empty journal: no heartbeat write, no claim, no secrets read;
    each round is one read of the journal. An entry appearing brings the rounds back."""
    token = yard.add("shop", mode="polling")
    yard.write(webhook=False)
    supervisor = await yard.start(heartbeat_interval=0.05)
    counter = supervisor.metrics.round_trips
    await wait_until(lambda: supervisor.metrics.fsm_sampled_at is not None)
    counter.reset()
    await wait_until(lambda: counter.commands["find"] >= 5)
    assert set(counter.commands) == {"find"}, dict(counter.commands)
    instances = await yard.collection_count(journal_module.INSTANCES_COLLECTION)

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    try:
        gone = UpdateJournal(client[database_name])
        update = yard.emulator.send_message(token, 44, "left behind")
        yard.emulator.bot(token).drop_pending()
        await gone.park("shop", [(update["update_id"], update)])
        await gone.close()  # gone, its update left in the journal
    finally:
        await client.close()
    assert (await yard.emulator.wait_for_reply(token, 44))["text"] == "left behind"
    assert counter.commands["update"] >= 1, "heartbeat and claim ran"
    assert instances == 1, "the heartbeat written at start"


async def test_rotated_secrets_are_applied_and_the_old_ones_refused(
    yard: Yard, mongo_uri: str, database_name: str
) -> None:
    token = yard.add("shop")
    yard.write()
    supervisor = await yard.start()
    old_path, old_secret = webhook_of(yard, "shop")
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    try:
        new = await SecretStore(client[database_name]).rotate("shop")
        assert await client[database_name][SECRETS_COLLECTION].count_documents({}) == 1
    finally:
        await client.close()
    assert supervisor.webhooks is not None
    await supervisor.webhooks.maintain()  # what the heartbeat does every few seconds
    new_path, new_secret = webhook_of(yard, "shop")
    assert new_path.endswith("/" + new.path)
    assert new_secret == new.token
    assert new_path != old_path
    update = json.dumps({"update_id": 99})
    refused = await yard.request("POST", old_path, data=update, headers={SECRET_HEADER: old_secret})
    assert refused[0] == 404
    yard.emulator.send_message(token, 5, "after rotation")
    assert (await yard.emulator.wait_for_reply(token, 5))["text"] == "after rotation"


async def test_switching_a_bot_to_polling_deletes_its_webhook(yard: Yard) -> None:
    token = yard.add("shop")
    yard.write()
    await yard.start()
    assert yard.emulator.webhook_info(token)["url"]
    assert await yard.stop() == 0
    yard.modes["shop"] = yard.modes["shop"].replace("mode: webhook", "mode: polling")
    yard.write()
    await yard.start()
    assert yard.emulator.webhook_info(token)["url"] == ""
    yard.emulator.send_message(token, 3, "polled")
    assert (await yard.emulator.wait_for_reply(token, 3))["text"] == "polled"


def test_rotate_command_rotates_webhook_bots_and_names_bad_input(
    tmp_path: Path, mongo_uri: str, database_name: str
) -> None:
    registry = tmp_path / "botyard.yaml"
    bots = "".join(
        f"  - name: {name}\n    token: 12345678{index}:{'A' * 35}\n"
        f"    routers: [bots.echo:router]\n    mode: {mode}\n"
        for index, (name, mode) in enumerate([("hook", "webhook"), ("poll", "polling")])
    )
    registry.write_text(
        f"storage:\n  uri: {mongo_uri}\n  database: {database_name}\n"
        f"webhook:\n  base_url: https://bots.example.com\nbots:\n{bots}"
    )

    def rotate(*args: str) -> Any:
        return CliRunner().invoke(main, ["webhook", "rotate", str(registry), *args])

    def stored() -> dict[str, Any]:
        with MongoClient[dict[str, Any]](mongo_uri) as client:
            return {doc["_id"]: doc for doc in client[database_name][SECRETS_COLLECTION].find()}

    try:
        first = rotate()
        assert first.exit_code == 0, first.output
        assert "rotated the webhook secrets of hook;" in first.output
        before = stored()
        assert set(before) == {"hook"}
        assert before["hook"]["path"] not in first.output
        assert before["hook"]["token"] not in first.output
        again = rotate("--bot", "hook")
        assert again.exit_code == 0, again.output
        assert stored()["hook"]["token"] != before["hook"]["token"]

        polling = rotate("--bot", "poll")
        assert polling.exit_code == 1
        assert "not in webhook mode: poll" in polling.output
        unknown = rotate("--bot", "nope")
        assert unknown.exit_code == 1
        assert "no bot named 'nope'" in unknown.output
        registry.write_text(registry.read_text().replace("mode: webhook", "mode: polling"))
        none = rotate()
        assert none.exit_code == 1
        assert "no bot in botyard.yaml uses mode: webhook" in none.output
    finally:
        with MongoClient[dict[str, Any]](mongo_uri) as client:
            client.drop_database(database_name)


async def test_a_running_process_takes_over_only_what_dead_replicas_left(
    yard: Yard, mongo_uri: str, database_name: str
) -> None:
    token = yard.add("shop")
    yard.write()
    supervisor = await yard.start()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    try:
        database = client[database_name]
        alive, dead = UpdateJournal(database), UpdateJournal(database)
        alive.instance, dead.instance = "other-host:1:alive", "other-host:2:dead"
        await alive.heartbeat()  # the dead one never wrote one
        orphan = yard.emulator.send_message(token, 51, "orphan")
        busy = yard.emulator.send_message(token, 52, "in hand elsewhere")
        yard.emulator.bot(token).drop_pending()
        assert await dead.record("shop", orphan["update_id"], orphan) is Recorded.ACCEPTED
        assert await alive.record("shop", busy["update_id"], busy) is Recorded.ACCEPTED
        await silence(dead)
        assert supervisor.webhooks is not None
        await supervisor.webhooks.maintain()  # what every heartbeat does
        assert (await yard.emulator.wait_for_reply(token, 51))["text"] == "orphan"
        await wait_until(lambda: supervisor.runners["shop"].counters.handled == 1)
        async with asyncio.timeout(30):  # the handled update's delete is batched
            while await database[JOURNAL_COLLECTION].count_documents({}) > 1:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        remaining = await database[JOURNAL_COLLECTION].find().to_list()
        assert [(entry["update_id"], entry["owner"]) for entry in remaining] == [
            (busy["update_id"], alive.instance)
        ], "the live replica's update is left to it"
        assert yard.emulator.sent_messages(token, 52) == []
    finally:
        await client.close()


async def start_shop(yard: Yard) -> tuple[str, Supervisor, WebhookEndpoint]:
    """One webhook bot, ``shop``, running: its token, the supervisor, the endpoint."""
    token = yard.add("shop")
    yard.write()
    supervisor = await yard.start()
    assert supervisor.webhooks is not None
    return token, supervisor, supervisor.webhooks


async def test_an_update_whose_journal_insert_lost_its_acknowledgement_is_handled_on_redelivery(
    yard: Yard,
) -> None:
    """The insert committed, the 200 became a 503; Telegram's redelivery meets the entry."""
    token, supervisor, webhooks = await start_shop(yard)
    journal = webhooks.journal
    lost = AutoReconnect("connection closed after the insert committed (injected)")
    journal.entries = Faulty(journal.entries, "insert_one", lost, after_write=True)  # type: ignore[assignment]

    yard.emulator.send_message(token, 61, "lost ack")  # delivered, 503, delivered again

    assert (await yard.emulator.wait_for_reply(token, 61))["text"] == "lost ack"
    statuses = [attempt.status for attempt in yard.emulator.delivery_attempts(token)]
    assert statuses == [503, 200], "answered 503 although the insert committed, then 200"
    await wait_until(lambda: supervisor.runners["shop"].counters.handled == 1)
    async with asyncio.timeout(30):  # the handled update's delete is batched
        while await yard.collection_count(JOURNAL_COLLECTION):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    await webhooks.maintain()
    await asyncio.sleep(0.5)
    assert [m["text"] for m in yard.emulator.sent_messages(token, 61)] == ["lost ack"]


async def test_entries_an_interrupted_claim_moved_are_handled_at_the_next_heartbeat(
    yard: Yard, mongo_uri: str, database_name: str
) -> None:
    """update_many is never retried: cut off half-way, the entries it moved are ours."""
    token, supervisor, webhooks = await start_shop(yard)
    journal = webhooks.journal
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    try:
        dead = UpdateJournal(client[database_name])
        dead.instance = "gone-host:3:dead"
        orphans = [yard.emulator.send_message(token, chat, f"orphan {chat}") for chat in (71, 72)]
        yard.emulator.bot(token).drop_pending()  # the dead replica answered 200 for both
        for update in orphans:
            assert await dead.record("shop", update["update_id"], update) is Recorded.ACCEPTED
        await silence(dead)
    finally:
        await client.close()
    real = journal.entries
    cut = AutoReconnect("connection closed after update_many committed (injected)")
    journal.entries = Faulty(real, "update_many", cut, after_write=True)  # type: ignore[assignment]
    with pytest.raises(AutoReconnect):
        await webhooks.maintain()
    owners = {entry["owner"] for entry in await real.find().to_list()}
    assert owners == {journal.instance}, "the claim moved them before it was cut off"
    assert yard.emulator.sent_messages(token, 71) == []

    await webhooks.maintain()  # the next heartbeat
    for chat in (71, 72):
        assert (await yard.emulator.wait_for_reply(token, chat))["text"] == f"orphan {chat}"
    await wait_until(lambda: supervisor.runners["shop"].counters.handled == 2)
    await webhooks.maintain()
    await asyncio.sleep(0.5)
    assert supervisor.runners["shop"].counters.handled == 2, "held entries are not handed out twice"


async def test_liveness_is_judged_by_the_servers_clock_not_the_hosts(
    yard: Yard, mongo_uri: str, database_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica whose clock runs an hour behind is alive all the same."""
    token, _, webhooks = await start_shop(yard)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    try:
        behind = UpdateJournal(client[database_name])
        behind.instance = "slow-clock-host:4:alive"
        late = utcnow() - timedelta(hours=1)
        monkeypatch.setattr(journal_module, "utcnow", lambda: late)
        await behind.heartbeat()
        busy = yard.emulator.send_message(token, 81, "in hand elsewhere")
        yard.emulator.bot(token).drop_pending()
        assert await behind.record("shop", busy["update_id"], busy) is Recorded.ACCEPTED
        monkeypatch.undo()
        await webhooks.maintain()
        await asyncio.sleep(0.5)
        assert yard.emulator.sent_messages(token, 81) == [], "not taken from a live replica"
        [entry] = await client[database_name][JOURNAL_COLLECTION].find().to_list()
        assert entry["owner"] == behind.instance
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("sections", "modes", "expected"),
    [
        ("webhook:\n  base_url: https://x.example\n  listen: 127.0.0.1:8443\n", "webhook", 8443),
        (
            "webhook:\n  base_url: https://x.example\n  listen: 127.0.0.1:8443\n"
            "ops:\n  listen: 127.0.0.1:9090\n",
            "polling",
            9090,
        ),
        ("ops:\n  listen: 127.0.0.1:9090\n", "polling", 9090),
        ("", "polling", None),
    ],
    ids=["webhook-bot", "no-webhook-bot-uses-ops", "ops-only", "no-server"],
)
def test_the_server_listens_on_webhook_listen_else_on_ops_listen(
    tmp_path: Path, sections: str, modes: str, expected: int | None
) -> None:
    path = tmp_path / "botyard.yaml"
    path.write_text(
        f"{sections}bots:\n  - name: shop\n    token: 123456789:{'A' * 35}\n"
        f"    routers: [bots.echo:router]\n    mode: {modes}\n"
    )
    address = server_address(load_registry(path))
    assert (address[1] if address else None) == expected


async def test_hostile_bodies_get_400_and_one_log_line(
    yard: Yard, caplog: pytest.LogCaptureFixture
) -> None:
    yard.add("shop")
    yard.write()
    supervisor = await yard.start()
    path, secret = webhook_of(yard, "shop")
    good = {SECRET_HEADER: secret, "Content-Type": "application/json"}
    message = {"message_id": 1, "date": 0, "chat": {"id": 1, "type": "private"}}
    hostile = {
        "nested past the parser": b'{"update_id": 1, "x": '
        + b"[" * 200_000
        + b"]" * 200_000
        + b"}",
        "nested past MongoDB": json.dumps({"update_id": 2, "x": json.loads("[" * 100 + "]" * 100)}),
        "update_id above 2^63": json.dumps({"update_id": 2**64, "message": message}),
        "an int above 2^63 inside": json.dumps(
            {"update_id": 3, "message": {**message, "chat": {"id": 2**70, "type": "private"}}}
        ),
    }
    caplog.clear()
    for body in hostile.values():
        status, text = await yard.request("POST", path, data=body, headers=good)
        assert status == 400, text
    rejected = [r for r in caplog.records if "webhook request rejected" in r.getMessage()]
    assert len(rejected) == len(hostile)
    assert all(r.exc_info is None and r.exc_text is None for r in rejected)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert await yard.collection_count(JOURNAL_COLLECTION) == 0
    assert supervisor.runners["shop"].counters.received == 0


async def test_slow_clients_are_closed_while_updates_keep_flowing(yard: Yard) -> None:
    token = yard.add("shop")
    yard.write(
        webhook_extra=(
            "  header_timeout: 1s\n  body_timeout: 1s\n  max_connections_per_client: 20\n"
        )
    )
    supervisor = await yard.start()
    assert supervisor.http is not None
    path, secret = webhook_of(yard, "shop")
    port = int(yard.url.rpartition(":")[2])

    async def slowloris(headers_done: bool, source: str = "127.0.0.2") -> tuple[float, bytes]:
        """From another loopback address: headers (or the body) a few bytes at a time."""
        with socket.socket() as raw:
            raw.bind((source, 0))
            raw.setblocking(False)
            await asyncio.get_running_loop().sock_connect(raw, ("127.0.0.1", port))
            reader, writer = await asyncio.open_connection(sock=raw.dup())
        opened = time.monotonic()
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\n"
        if headers_done:
            head += f"{SECRET_HEADER}: {secret}\r\nContent-Length: 100\r\n\r\n{{"
        writer.write(head.encode())
        answer = b""
        try:
            async with asyncio.timeout(60):
                while not reader.at_eof():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.3):
                            answer += await reader.read(1024)
                            continue
                    writer.write(b"X-Slow: 1\r\n" if not headers_done else b" ")
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
        return time.monotonic() - opened, answer

    slow = [asyncio.create_task(slowloris(headers_done=False)) for _ in range(30)]
    trickled_body = asyncio.create_task(slowloris(headers_done=True, source="127.0.0.3"))
    for n in range(5):  # Telegram's deliveries go on meanwhile
        yard.emulator.send_message(token, 7, f"still here {n}")
        reply = await yard.emulator.wait_for_reply(token, 7, timeout=30)
        assert reply["text"] == f"still here {n}"
    results = await asyncio.gather(*slow)
    body_took, body_answer = await trickled_body
    guard = supervisor.http.guard
    assert guard.refused == 10, "20 connections per client address"
    assert guard.timed_out >= 20
    held = sorted(took for took, _ in results)[10:]
    assert all(took >= 0.9 for took in held), "closed no sooner than header_timeout"
    assert all(answer == b"" for _, answer in results), "closed without an answer"
    assert body_answer.startswith(b"HTTP/1.1 408"), body_answer[:100]
    assert body_took >= 0.9
    assert supervisor.runners["shop"].counters.handled == 5
