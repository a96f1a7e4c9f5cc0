"""/metrics, /healthz, /readyz and the event-loop watchdog, on a running in-process botyard."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from botyard.database.embedded import SecantusServer
from botyard.emulator import BotAPIEmulator
from botyard.ops.series import RunningTotals
from botyard.runtime.runner import BotCounters
from botyard.runtime.supervisor import Supervisor

from webhook_harness import Yard, open_yard, wait_until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
async def yard(
    tmp_path: Path, bot_api: BotAPIEmulator, mongo_uri: str, database_name: str
) -> AsyncIterator[Yard]:
    async with open_yard(tmp_path, bot_api, mongo_uri, database_name) as opened:
        yield opened


async def scrape(yard: Yard) -> tuple[str, Samples]:
    status, text = await yard.request("GET", "/metrics")
    assert status == 200
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def handle_five_updates(yard: Yard, supervisor: Supervisor, hook: str, poll: str) -> None:
    """Four to ``hook`` (one raising, one setting a state), one to ``poll``; all handled and
    the state sampled."""
    for text in ("one", "two", "remember"):
        yard.emulator.send_message(hook, 7, text)
        await yard.emulator.wait_for_reply(hook, 7)
    yard.emulator.send_message(hook, 7, "poison")
    yard.emulator.send_message(poll, 8, "polled")
    await yard.emulator.wait_for_reply(poll, 8)
    await wait_until(lambda: supervisor.runners["hook"].counters.errors == 1)
    await wait_until(lambda: ("hook", "Test:remembered") in supervisor.metrics.fsm_records)


async def test_metrics_show_counters_moving_and_never_a_token(yard: Yard) -> None:
    hook = yard.add("hook")
    poll = yard.add("poll", mode="polling")
    yard.write()
    supervisor = await yard.start(fsm_sample_interval=0.2)
    _, before = await scrape(yard)
    assert value(before, "botyard_bot_status", bot="hook", status="running") == 1
    assert value(before, "botyard_bot_status", bot="poll", status="running") == 1
    assert value(before, "botyard_updates_received_total", bot="hook") == 0

    await handle_five_updates(yard, supervisor, hook, poll)
    deleted_before = value(before, "botyard_mongodb_round_trips_total", command="delete")
    await wait_until(
        lambda: supervisor.metrics.round_trips.commands["delete"] > deleted_before
    )  # the journal's batched delete

    text, after = await scrape(yard)
    assert value(after, "botyard_updates_received_total", bot="hook") == 4
    assert value(after, "botyard_updates_handled_total", bot="hook") == 3
    assert value(after, "botyard_handler_errors_total", bot="hook") == 1
    assert value(after, "botyard_updates_handled_total", bot="poll") == 1
    assert value(after, "botyard_update_handling_seconds_count", bot="hook") == 4
    assert value(after, "botyard_webhook_requests_total", bot="hook", outcome="accepted") == 4
    assert value(after, "botyard_updates_in_flight", bot="hook") == 0
    assert value(after, "botyard_fsm_records", bot="hook", state="Test:remembered") == 1
    for command in ("insert", "find", "delete"):
        assert value(after, "botyard_mongodb_round_trips_total", command=command) > value(
            before, "botyard_mongodb_round_trips_total", command=command
        )
    assert value(after, "botyard_event_loop_lag_seconds_count") > 0
    for token in (hook, poll):
        assert token not in text
        assert token.split(":")[1] not in text


async def test_per_bot_off_exports_platform_totals_without_a_bot_label(yard: Yard) -> None:
    hook = yard.add("hook")
    poll = yard.add("poll", mode="polling")
    yard.write(per_bot_metrics="false")
    supervisor = await yard.start(fsm_sample_interval=0.2)
    await handle_five_updates(yard, supervisor, hook, poll)

    text, samples = await scrape(yard)
    assert "bot=" not in text
    assert value(samples, "botyard_updates_received_total") == 5
    assert value(samples, "botyard_updates_handled_total") == 4
    assert value(samples, "botyard_handler_errors_total") == 1
    assert value(samples, "botyard_update_retries_total") == 0
    assert value(samples, "botyard_updates_in_flight") == 0
    assert value(samples, "botyard_bot_status", status="running") == 2
    assert value(samples, "botyard_bot_status", status="unauthorized") == 0
    assert value(samples, "botyard_update_handling_seconds_count") == 5
    assert value(samples, "botyard_update_handling_seconds_bucket", le="+Inf") == 5
    assert value(samples, "botyard_webhook_requests_total", outcome="accepted") == 4
    assert value(samples, "botyard_fsm_records", state="Test:remembered") == 1
    assert value(samples, "botyard_api_too_many_requests_total") == 0

    # a bot that leaves keeps its part in the totals: they never go down
    poll_entry = f"  - name: poll\n    token: {poll}\n    api_server: {yard.emulator.url}\n"
    registry = yard.path.read_text()
    assert poll_entry in registry
    yard.path.write_text(registry.replace(poll_entry + yard.modes["poll"], ""))
    assert await supervisor.reload()
    assert set(supervisor.runners) == {"hook"}
    text, samples = await scrape(yard)
    assert "bot=" not in text
    assert value(samples, "botyard_updates_handled_total") == 4
    assert value(samples, "botyard_update_handling_seconds_count") == 5
    assert value(samples, "botyard_bot_status", status="running") == 1


async def test_auto_labels_series_by_bot_for_a_few_bots(yard: Yard) -> None:
    token = yard.add("hook")
    yard.write(per_bot_metrics="auto")
    await yard.start()
    yard.emulator.send_message(token, 7, "one")
    await yard.emulator.wait_for_reply(token, 7)
    text, samples = await scrape(yard)
    # #15: the default sample is taken every five minutes (it was every minute)
    assert (
        "# HELP botyard_fsm_records FSM records per state (and per bot when per_bot), "
        "sampled every 300s, counted up to 10000 per bot and state.\n"
    ) in text
    assert value(samples, "botyard_updates_handled_total", bot="hook") == 1
    assert value(samples, "botyard_update_handling_seconds_count", bot="hook") == 1
    assert value(samples, "botyard_bot_status", bot="hook", status="running") == 1


async def test_bot_api_calls_are_timed_and_their_failures_counted_by_method(
    yard: Yard,
) -> None:
    token = yard.add("hook")
    yard.write()
    await yard.start()
    yard.emulator.send_message(token, 7, "one")
    await yard.emulator.wait_for_reply(token, 7)
    _, before = await scrape(yard)
    sent = value(before, "botyard_api_call_seconds_count", method="sendMessage")
    assert sent >= 1
    assert value(before, "botyard_api_call_errors_total", method="sendMessage", kind="5xx") == 0

    yard.emulator.add_fault("5xx", methods="sendMessage", bot=token, times=1)
    yard.emulator.add_fault("429", methods="sendMessage", bot=token, times=1, retry_after=1)
    yard.emulator.send_message(token, 7, "two")
    await yard.emulator.wait_for_reply(token, 7, text="two", timeout=60)  # retried twice
    text, after = await scrape(yard)
    assert value(after, "botyard_api_call_errors_total", method="sendMessage", kind="5xx") == 1
    assert value(after, "botyard_api_call_errors_total", method="sendMessage", kind="429") == 1
    assert value(after, "botyard_api_call_seconds_count", method="sendMessage") == sent + 3
    assert "botyard_api_call_seconds_count{bot=" not in text
    assert 'method="getUpdates"' not in text  # long polls are not latency


async def test_healthz_and_readyz_list_bots_without_secrets(yard: Yard) -> None:
    token = yard.add("hook")
    yard.add("poll", mode="polling")
    yard.write()
    await yard.start()
    assert await yard.request("GET", "/healthz") == (200, '{"alive": true}')
    status, text = await yard.request("GET", "/readyz")
    assert status == 200, text
    body = json.loads(text)
    assert body["ready"] is True
    assert body["mongodb"] == "ok"
    assert body["bots"] == [
        {"name": "hook", "mode": "webhook", "status": "running", "ready": True},
        {"name": "poll", "mode": "polling", "status": "running", "ready": True},
    ]
    secret = yard.emulator.bot(token).webhook.secret_token
    assert secret is not None
    assert secret not in text
    assert token.split(":")[1] not in text


async def test_readyz_follows_mongodb_going_away_and_coming_back(
    tmp_path: Path, bot_api: BotAPIEmulator, database_name: str
) -> None:
    server = SecantusServer(storage_path=str(tmp_path / "db"), sync_on_commit=True).start()
    try:
        yard = Yard(tmp_path, bot_api, server.uri, database_name)
        yard.add("poll", mode="polling")
        yard.write(webhook=False, ops=True)
        await yard.start()
        assert (await yard.request("GET", "/readyz"))[0] == 200
        server.stop()
        status, text = await yard.request("GET", "/readyz")
        assert status == 503
        body = json.loads(text)
        assert body["ready"] is False
        assert body["mongodb"].startswith("unreachable")
        assert body["bots"][0]["status"] == "running", "the bot itself is fine"
        assert (await yard.request("GET", "/healthz"))[0] == 200, "alive all the same"
        server.start()
        async with asyncio.timeout(60):
            while (await yard.request("GET", "/readyz"))[0] != 200:  # noqa: ASYNC110
                await asyncio.sleep(0.2)
        assert await yard.stop() == 0
    finally:
        server.stop()


async def test_the_watchdog_names_the_bot_and_handler_that_block_the_loop(
    yard: Yard, caplog: pytest.LogCaptureFixture
) -> None:
    token = yard.add("blocker")
    yard.add("innocent", mode="polling")
    yard.write()
    supervisor = await yard.start()
    with caplog.at_level(logging.WARNING, logger="botyard.watchdog"):
        yard.emulator.send_message(token, 9, "block")
        assert (await yard.emulator.wait_for_reply(token, 9))["text"] == "unblocked"
        await wait_until(lambda: any("bot=blocker" in r.getMessage() for r in caplog.records))
    [line] = [r.getMessage() for r in caplog.records if "bot=blocker" in r.getMessage()]
    handler = f"{yard.module}.router.<locals>.block_the_loop"
    assert "event loop blocked for " in line
    assert f"bot=blocker handler={handler} at " in line
    assert f"{yard.module}.py:" in line
    assert line.endswith("in synchronous_driver_call; every bot in this process waited")
    assert ", blocked in " in line, "the handler's line, then where it is stuck"
    _, samples = await scrape(yard)
    blocked = value(samples, "botyard_event_loop_blocked_total", bot="blocker", handler=handler)
    assert blocked == 1
    assert supervisor.runners["innocent"].counters.errors == 0


async def test_cleanup_sweeps_are_counted_per_bot(yard: Yard) -> None:
    token = yard.add("hook")
    yard.write()
    supervisor = await yard.start()
    yard.emulator.send_message(token, 11, "remember")
    await yard.emulator.wait_for_reply(token, 11)
    assert supervisor.cleanup is not None
    await supervisor.cleanup.run_once()  # what the schedule runs
    _, samples = await scrape(yard)
    assert value(samples, "botyard_cleanup_runs_total", bot="hook") == 1
    assert value(samples, "botyard_cleanup_removed_records_total", bot="hook") == 0
    assert value(samples, "botyard_cleanup_failures_total", bot="hook") == 0


async def test_readyz_is_not_ready_while_an_enabled_bot_is_down(yard: Yard) -> None:
    token = yard.add("doomed", mode="polling")
    yard.add("fine", mode="polling")
    yard.write(webhook=False, ops=True)
    supervisor = await yard.start()
    yard.emulator.revoke(token)
    await wait_until(lambda: supervisor.runners["doomed"].status.value == "unauthorized")
    status, text = await yard.request("GET", "/readyz")
    assert status == 503
    bots = {bot["name"]: bot for bot in json.loads(text)["bots"]}
    assert bots["doomed"] == {
        "name": "doomed",
        "mode": "polling",
        "status": "unauthorized",
        "ready": False,
    }
    assert bots["fine"]["ready"] is True
    _, samples = await scrape(yard)
    assert value(samples, "botyard_bot_status", bot="doomed", status="unauthorized") == 1


def test_a_bot_restarted_between_scrapes_keeps_what_it_counted_in_the_total() -> None:
    """Platform-wide counters sum the runners' counts; a runner restarted by a reload counts
    from zero, and may have counted more than before by the next scrape."""
    total = RunningTotals(1)
    first, restarted = BotCounters(handled=5), BotCounters(handled=8)
    assert total.totals({"shop": (first, (5,))}) == [5]
    assert total.totals({"shop": (restarted, (8,))}) == [13]
    restarted.handled = 9
    assert total.totals({"shop": (restarted, (9,))}) == [14]
    assert total.totals({}) == [14], "a bot that left keeps its part"


def test_running_totals_keep_each_count_that_went_down_in_one_pass() -> None:
    totals = RunningTotals(2)
    shop, cafe = BotCounters(), BotCounters()
    assert totals.totals({"shop": (shop, (5, 2)), "cafe": (cafe, (1, 1))}) == [6, 3]
    assert totals.totals({"shop": (shop, (3, 4)), "cafe": (cafe, (1, 1))}) == [9, 5]
    assert totals.totals({"shop": (shop, (3, 4))}) == [9, 5]
