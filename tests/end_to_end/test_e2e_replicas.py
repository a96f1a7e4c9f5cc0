"""Several ``botyard run`` replicas on one registry, one database and the emulator.

One world, phases in order (each replica start costs seconds on a loaded
machine): three replicas settle; one is SIGKILLed; a fourth joins and one
leaves by SIGTERM; one is frozen with SIGSTOP; one loses MongoDB. Throughout,
the emulator counts 409 answers (a second poller on a token), and every bot
must answer every message exactly once. Short cluster timings keep it quick:
heartbeat 1 s, failover 5 s.

Two more worlds: webhook bots behind a load balancer that sends their updates
to replicas that do not hold them (and round-robin over all), with a holder
SIGKILLed mid-stream; and hot reload (a bot added to the YAML, then removed)
with ``/readyz`` and ``/metrics`` read along the way.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pymongo import MongoClient

from botyard.database.embedded import free_port
from botyard.webhook.journal import JOURNAL_COLLECTION

from e2e import QUESTIONS, BotyardProcess, World

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(720)]

FAILOVER = 5.0
CLUSTER = f"cluster:\n  heartbeat_interval: 1s\n  failover_time: {FAILOVER:g}s\n"
EXTRA = CLUSTER + "cleanup:\n  schedule: 2s\nops:\n  listen: 127.0.0.1:0\n"
ECHOES = [f"echo{i}" for i in range(9)]
QUESTIONNAIRES = ["quiz0", "quiz1", "quiz2"]
BOTS = ECHOES + QUESTIONNAIRES


class Replica:
    """One ``botyard run`` of the cluster, with what its log tells about it."""

    def __init__(self, process: BotyardProcess) -> None:
        self.process = process
        line = process.wait_for_log(r"cluster: replica \S+ joined", timeout=90)
        found = re.search(r"cluster: replica (\S+) joined", line)
        assert found is not None
        self.id = found.group(1)
        listening = process.wait_for_log(r"http server listening on", timeout=30)
        url = re.search(r"(http://\S+) ", listening)
        assert url is not None
        self.url = url.group(1)

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as response:
            text = response.read().decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name) and not line.startswith("#")
        )


class MongoProxy:
    """A TCP relay to the database that a test can cut, as a network partition would."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cut = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.cut:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                end.close()

    def sever(self) -> None:
        self.cut = True
        for end in self._sockets:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.sever()
        self.listener.close()


def _hosts(world: World) -> dict[str, list[str]]:
    """Replica id -> the bots its document says it serves (live replicas only)."""
    with MongoClient[dict[str, Any]](world.mongo_uri, tz_aware=True) as client:
        now = client.admin.command("hello")["localTime"]
        docs = list(client[world.database_name]["botyard_replicas"].find())
    return {
        doc["_id"]: doc.get("bots", [])
        for doc in docs
        if (now.replace(tzinfo=None) - doc["heartbeat_at"].replace(tzinfo=None)).total_seconds()
        < FAILOVER - 1
    }


def _wait_settled(
    world: World, replicas: list[Replica], timeout: float = 120, bots: list[str] = BOTS
) -> None:
    """Until exactly these replicas are live and split every bot evenly between them."""
    ids = sorted(r.id for r in replicas)
    deadline = time.monotonic() + timeout
    hosts: dict[str, list[str]] = {}
    while time.monotonic() < deadline:
        hosts = _hosts(world)
        served = sorted(bot for bots in hosts.values() for bot in bots)
        loads = sorted(len(bots) for bots in hosts.values())
        if sorted(hosts) == ids and served == sorted(bots) and loads[-1] - loads[0] <= 1:
            return
        time.sleep(0.3)
    raise AssertionError(f"not settled on {ids} within {timeout}s: {hosts}")


def _conflicts(world: World) -> dict[str, int]:
    return {bot: world.emulator.conflicts(token) for bot, token in world.tokens.items()}


class Traffic:
    """Messages to every bot, each from a fresh user, and their replies counted."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.next_user = 10_000
        self.sent: list[tuple[str, int, str]] = []

    def ping_all(self, label: str) -> list[tuple[str, int, str]]:
        batch = []
        for bot in BOTS:
            self.next_user += 1
            text = f"{label} {self.next_user}"
            if bot in QUESTIONNAIRES:
                text = "/start"  # a fresh user: the first question, once
            self.world.say(bot, self.next_user, text)
            batch.append((bot, self.next_user, text))
        self.sent += batch
        return batch

    def wait_answered(self, batch: list[tuple[str, int, str]], timeout: float) -> float:
        started = time.monotonic()
        for bot, user, _ in batch:
            left = max(1.0, timeout - (time.monotonic() - started))
            self.world.reply(bot, user, timeout=left)
        return time.monotonic() - started

    def assert_each_answered_once(self) -> None:
        time.sleep(2)  # a duplicate would come within this
        for bot, user, text in self.sent:
            replies = self.world.emulator.sent_messages(self.world.tokens[bot], user)
            assert len(replies) == 1, f"{bot} answered {text!r} {len(replies)} times"


@pytest.fixture
def processes(world: World) -> Iterator[list[BotyardProcess]]:
    started: list[BotyardProcess] = []
    yield started
    for process in started:
        if process.process is not None and process.process.poll() is None:
            process.signal(signal.SIGCONT)
            process.kill()
        process.assert_no_secrets()


def _start(world: World, processes: list[BotyardProcess], **env: str) -> Replica:
    process = world.botyard()
    process.env.update(env)
    processes.append(process.start())
    return Replica(process)


def _holder(world: World, bot: str) -> str:
    return next(replica for replica, bots in _hosts(world).items() if bot in bots)


def test_replicas_share_the_bots_fail_over_and_rebalance(
    world: World, processes: list[BotyardProcess], mongo_uri: str
) -> None:
    world.write(
        {
            **dict.fromkeys(ECHOES, "slowbot:router"),
            **dict.fromkeys(QUESTIONNAIRES, "bots.questionnaire:router"),
        },
        extra=EXTRA,
    )
    traffic = Traffic(world)
    replicas = [_start(world, processes) for _ in range(3)]
    _wait_settled(world, replicas)

    # settled: no 409 in 15 s, every bot answers once, one sweeper and one sampler
    before = _conflicts(world)
    sweeps = [r.metric("botyard_cleanup_runs_total") for r in replicas]
    traffic.wait_answered(traffic.ping_all("settled"), timeout=60)
    time.sleep(15)
    assert _conflicts(world) == before
    sweeps = [
        r.metric("botyard_cleanup_runs_total") - s for r, s in zip(replicas, sweeps, strict=True)
    ]
    assert sum(1 for count in sweeps if count > 0) == 1, sweeps
    samples = [r.metric("botyard_fsm_samples_total") for r in replicas]
    assert sum(1 for count in samples if count > 0) == 1, samples
    traffic.assert_each_answered_once()

    # SIGKILL the replica serving a questionnaire in progress
    user = 777
    quiz = QUESTIONNAIRES[0]
    world.say(quiz, user, "/start")
    assert world.reply(quiz, user) == QUESTIONS[0]
    world.say(quiz, user, "red")
    assert world.reply(quiz, user) == QUESTIONS[1]
    # Killed once "red" is confirmed: an update handled but not yet confirmed is
    # in flight, and handled again after a crash (at-least-once, as in one process).
    deadline = time.monotonic() + 30
    while world.emulator.pending_updates(world.tokens[quiz]) and time.monotonic() < deadline:
        time.sleep(0.05)
    victim = next(r for r in replicas if r.id == _holder(world, quiz))
    victim.process.kill()
    killed_at = time.monotonic()
    replicas.remove(victim)
    batch = traffic.ping_all("after-kill")
    traffic.wait_answered(batch, timeout=FAILOVER + 60)
    failover = time.monotonic() - killed_at
    print(f"failover after SIGKILL: every bot answered within {failover:.1f}s")
    world.say(quiz, user, "cat")
    assert world.reply(quiz, user) == QUESTIONS[2]
    _wait_settled(world, replicas)
    traffic.assert_each_answered_once()
    assert _conflicts(world) == before

    # a fourth replica joins (through a relay to MongoDB that phase 5 cuts), one leaves
    host, port = mongo_uri.split("//", 1)[1].split("/", 1)[0].split("?")[0].rsplit(":", 1)
    proxy = MongoProxy((host, int(port)))
    try:
        joiner = _start(
            world,
            processes,
            MONGODB_URI=f"mongodb://{host}:{proxy.port}/?retryWrites=false&directConnection=true",
        )
        batch = traffic.ping_all("while-joining")
        replicas.append(joiner)
        _wait_settled(world, replicas)
        traffic.wait_answered(batch, timeout=60)
        leaving = replicas.pop(0)
        batch = traffic.ping_all("while-leaving")
        leaving.process.signal(signal.SIGTERM)
        _wait_settled(world, replicas)
        assert leaving.process.wait(60) == 0
        traffic.wait_answered(batch, timeout=60)
        traffic.assert_each_answered_once()
        assert _conflicts(world) == before

        # SIGSTOP longer than the failover: the other one serves; after SIGCONT no double
        frozen, other = replicas
        frozen_bots = _hosts(world)[frozen.id]
        frozen.process.signal(signal.SIGSTOP)
        time.sleep(FAILOVER + 1)
        batch = traffic.ping_all("while-frozen")
        traffic.wait_answered(batch, timeout=60)
        assert set(frozen_bots) <= set(_hosts(world)[other.id])
        frozen.process.signal(signal.SIGCONT)
        frozen.process.wait_for_log(r"cluster: no heartbeat for .* stopping \d+ bot", timeout=30)
        batch = traffic.ping_all("after-thaw")
        traffic.wait_answered(batch, timeout=60)
        _wait_settled(world, replicas)
        traffic.assert_each_answered_once()
        assert _conflicts(world) == before

        # the joiner loses MongoDB: it stops polling before the failover time
        cut_off = joiner
        survivor = next(r for r in replicas if r is not cut_off)
        lines_before = cut_off.process.output.count("cluster: no heartbeat")
        proxy.sever()
        severed_at = time.monotonic()
        cut_off.process.wait_for_log(
            r"cluster: no heartbeat for .* stopping \d+ bot", timeout=60, count=lines_before + 1
        )
        stopped_after = time.monotonic() - severed_at
        print(f"cut off from MongoDB: polling stopped after {stopped_after:.1f}s")
        batch = traffic.ping_all("partitioned")
        traffic.wait_answered(batch, timeout=FAILOVER + 60)
        _wait_settled(world, [survivor])  # the cut-off replica is gone, the survivor has all
        traffic.assert_each_answered_once()
        assert _conflicts(world) == before
    finally:
        proxy.close()
    # SIGTERM: the survivor hands over nothing (no one is left) and exits cleanly; the
    # cut-off one exits too, after trying its releases for at most the fence time
    started = time.monotonic()
    assert survivor.process.stop() == 0
    assert cut_off.process.stop() == 0
    print(f"both stopped by SIGTERM in {time.monotonic() - started:.1f}s")


HOOKS = [f"hook{i}" for i in range(4)]


class LoadBalancer:
    """In front of the replicas, as a load balancer would be: forwards each webhook POST
    to the replica ``choose(bot)`` names, and counts where each bot's requests went."""

    def __init__(self) -> None:
        self.choose: Callable[[str], Replica] = self._fail
        self.sent: list[tuple[str, str]] = []
        balancer = self

        class Forward(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                bot = self.path.split("/")[2]
                target = balancer.choose(bot)
                balancer.sent.append((bot, target.id))
                request = urllib.request.Request(
                    target.url + self.path, data=body, headers=dict(self.headers), method="POST"
                )
                try:
                    with urllib.request.urlopen(request, timeout=30) as response:
                        status, answer = response.status, response.read()
                except urllib.error.HTTPError as error:
                    status, answer = error.code, error.read()
                except OSError:
                    status, answer = 502, b"replica unreachable"
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Forward)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def _fail(bot: str) -> Replica:
        raise AssertionError(f"no replica chosen for {bot}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _alive(replicas: list[Replica]) -> list[Replica]:
    return [r for r in replicas if r.process.process and r.process.process.poll() is None]


def test_webhook_updates_sent_to_any_replica_are_handled_by_the_holder_once_in_order(
    world: World, processes: list[BotyardProcess]
) -> None:
    balancer = LoadBalancer()
    try:
        world.write(
            dict.fromkeys(HOOKS, "slowbot:router"),
            extra=EXTRA,
            mode="webhook",
            webhook={
                "base_url": balancer.url,
                "listen": "${WEBHOOK_LISTEN}",
                "max_connections": "1",
            },
        )
        replicas = [
            _start(world, processes, WEBHOOK_LISTEN=f"127.0.0.1:{free_port()}") for _ in range(3)
        ]
        _wait_settled(world, replicas, bots=HOOKS)
        for bot in HOOKS:
            deadline = time.monotonic() + 60
            while not world.emulator.webhook_info(world.tokens[bot])["url"].startswith(
                balancer.url
            ):
                assert time.monotonic() < deadline, f"{bot}: no webhook set"
                time.sleep(0.2)

        def non_holder(bot: str) -> Replica:
            holder = _holder(world, bot)
            return next(r for r in _alive(replicas) if r.id != holder)

        def answers(bot: str, user: int, count: int, timeout: float = 60) -> list[str]:
            deadline = time.monotonic() + timeout
            texts: list[str] = []
            while time.monotonic() < deadline:
                texts = [m["text"] for m in world.emulator.sent_messages(world.tokens[bot], user)]
                if len(texts) >= count:
                    break
                time.sleep(0.1)
            return texts

        # every update to a replica that does not hold the bot: handled once, in order
        balancer.choose = non_holder
        for bot in HOOKS:
            for n in range(6):
                world.say(bot, 100, f"n{n}")
        for bot in HOOKS:
            assert answers(bot, 100, 6) == [f"ok n{n}" for n in range(6)], bot
        holders = {bot: _holder(world, bot) for bot in HOOKS}
        assert len(balancer.sent) >= 6 * len(HOOKS)  # more if a delivery was retried
        assert all(holders[bot] != target for bot, target in balancer.sent)

        # one chat's updates spread over every replica, holder included: still in order
        turn = itertools.count()
        balancer.choose = lambda bot: _alive(replicas)[next(turn) % len(_alive(replicas))]
        sent_before = len(balancer.sent)
        for bot in HOOKS:
            for n in range(9):
                world.say(bot, 200, f"m{n}")
        for bot in HOOKS:
            assert answers(bot, 200, 9) == [f"ok m{n}" for n in range(9)], bot
        assert {target for _, target in balancer.sent[sent_before:]} == {r.id for r in replicas}

        # the holder SIGKILLed while handling updates others journaled: the next holder
        # handles them, and those that came meanwhile
        balancer.choose = non_holder
        bot = HOOKS[0]
        victim = next(r for r in replicas if r.id == holders[bot])
        slow_users = [300 + i for i in range(3)]
        for user in slow_users:
            world.say(bot, user, "slow 4")
        victim.process.wait_for_log(r"slow handler started: slow 4", count=3, timeout=60)
        victim.process.kill()
        replicas.remove(victim)
        for n in range(3):
            world.say(bot, 400, f"k{n}")
        for user in slow_users:
            assert answers(bot, user, 1, timeout=FAILOVER + 60) == ["done slow 4"], user
        assert answers(bot, 400, 3, timeout=FAILOVER + 60) == [f"ok k{n}" for n in range(3)]
        _wait_settled(world, replicas, bots=HOOKS)
        time.sleep(2)  # a duplicate would come within this
        for bot in HOOKS:
            token = world.tokens[bot]
            assert [m["text"] for m in world.emulator.sent_messages(token, 100)] == [
                f"ok n{n}" for n in range(6)
            ]
            assert [m["text"] for m in world.emulator.sent_messages(token, 200)] == [
                f"ok m{n}" for n in range(9)
            ]
        for user in slow_users:
            assert len(world.emulator.sent_messages(world.tokens[HOOKS[0]], user)) == 1
        assert len(world.emulator.sent_messages(world.tokens[HOOKS[0]], 400)) == 3
        deadline = time.monotonic() + 30
        while world.collection(JOURNAL_COLLECTION) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert world.collection(JOURNAL_COLLECTION) == [], "every journaled update was handled"
        for replica in replicas:
            assert replica.process.stop() == 0
    finally:
        balancer.close()


def _readyz(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_hot_reload_starts_an_added_bot_on_one_replica_and_readyz_waits_for_the_share(
    world: World, processes: list[BotyardProcess]
) -> None:
    echoes = ECHOES[:3]
    routers = dict.fromkeys(echoes, "slowbot:router")
    world.write(routers, extra=EXTRA)
    world.token("added")  # in the replicas' environment for when the YAML names it
    before = _conflicts(world)

    # /readyz, probed from the moment the server listens: 503 until joined and started
    first = world.botyard()
    processes.append(first.start())
    listening = first.wait_for_log(r"http server listening on", timeout=90)
    url = re.search(r"(http://\S+) ", listening)
    assert url is not None
    probes: list[tuple[int, dict[str, Any]]] = []
    deadline = time.monotonic() + 90
    while not probes or probes[-1][0] != 200:
        assert time.monotonic() < deadline, f"never ready: {probes[-1:]}"
        probes.append(_readyz(url.group(1)))
        time.sleep(0.05)
    assert probes[0][0] == 503
    assert probes[0][1]["joined"] is False
    assert {bot["status"] for bot in probes[0][1]["bots"]} == {"elsewhere"}
    for status, body in probes:
        running = all(bot["status"] == "running" for bot in body["bots"])
        assert (status == 200) == (body["joined"] and running), body
    alone = Replica(first)

    # a second replica joins: the bots split, and /metrics says who serves what
    second = _start(world, processes)
    _wait_settled(world, [alone, second], bots=echoes)
    hosts = _hosts(world)
    for replica in (alone, second):
        assert replica.metric("botyard_cluster_bots_served") == len(hosts[replica.id])
        assert replica.metric("botyard_cluster_replicas_live") == 2
        deadline = time.monotonic() + 60
        while (ready := _readyz(replica.url))[0] != 200:
            assert time.monotonic() < deadline, f"{replica.id} not ready: {ready}"
            time.sleep(0.2)
        elsewhere = {bot["name"] for bot in ready[1]["bots"] if bot["status"] == "elsewhere"}
        assert elsewhere == set(echoes) - set(hosts[replica.id])
    moved = len(hosts[second.id])
    assert moved >= 1
    assert alone.metric('botyard_cluster_handovers_total{kind="taken"}') == len(echoes)
    assert alone.metric('botyard_cluster_handovers_total{kind="released"}') == moved
    assert second.metric('botyard_cluster_handovers_total{kind="taken"}') == moved

    # a bot added to the YAML: started on exactly one replica, and answers once
    world.write({**routers, "added": "slowbot:router"}, extra=EXTRA)
    _wait_settled(world, [alone, second], bots=[*echoes, "added"])
    world.say("added", 900, "hello")
    assert world.reply("added", 900, timeout=60) == "ok hello"
    outputs = [replica.process.output for replica in (alone, second)]
    assert sum(output.count("bot=added started") for output in outputs) == 1
    holder = next(r for r in (alone, second) if r.id == _holder(world, "added"))

    # deleted from the YAML: stopped on its holder, served nowhere
    world.write(routers, extra=EXTRA)
    _wait_settled(world, [alone, second], bots=echoes)
    holder.process.wait_for_log(r"bot=added stopped", timeout=60)
    time.sleep(2)
    assert len(world.emulator.sent_messages(world.tokens["added"], 900)) == 1
    assert "added" not in {
        doc["_id"] for doc in world.collection("botyard_bot_claims", {"holder": {"$ne": None}})
    }
    assert _conflicts(world) == before
    for replica in (alone, second):
        assert replica.process.stop() == 0
