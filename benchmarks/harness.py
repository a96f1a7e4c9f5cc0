"""What every figure shares: the emulated Telegram, the database, and the contenders' processes.

The benchmark process runs the Bot API emulator on its own event loop and plays
the users; each contender runs as a separate process (``botyard run``, or the
plain-aiogram program of :mod:`benchmarks.aiogram_app`) talking to the emulator
over HTTP and to the same MongoDB-compatible server, so that its memory and CPU
can be read from ``/proc`` and nothing of the harness counts against it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pymongo import AsyncMongoClient

from botyard.database.embedded import SecantusServer
from botyard.emulator import BotAPIEmulator

REPO = Path(__file__).resolve().parent.parent
#: Clock ticks per second, for the CPU times in /proc/<pid>/stat.
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time process ``pid`` has used so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


@dataclass(frozen=True)
class Launch:
    """What a contender process is started with."""

    tokens: Sequence[str]
    router: str
    database: str
    uri: str
    api_server: str
    workdir: Path


class Contender(Protocol):
    """A way of running many bots in one process."""

    @property
    def name(self) -> str:
        """How the table names it."""
        ...

    def prepare(self, launch: Launch) -> tuple[list[str], dict[str, str]]:
        """Write what the process needs into ``launch.workdir``; return its argv and env."""
        ...

    def help_command(self) -> list[str]:
        """The argv that prints the contender's usage (figure 6)."""
        ...


@dataclass
class ContenderProcess:
    """A running contender: its process, log file, and the resources it uses."""

    name: str
    process: asyncio.subprocess.Process
    log: Path

    def rss_bytes(self) -> int:
        """Resident memory now (``VmRSS``)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"{self.name}: no VmRSS for pid {self.process.pid}")

    def cpu_seconds(self) -> float:
        """User plus system CPU time used so far."""
        return cpu_seconds(self.process.pid)

    def check_alive(self) -> None:
        code = self.process.returncode
        if code is not None:
            raise RuntimeError(f"{self.name} exited with status {code}: {self.tail()}")

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    async def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, wait (without blocking the loop), SIGKILL after ``timeout``."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(timeout):
                await self.process.wait()
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


@dataclass
class World:
    """The emulator with its bots, the database server, and a scratch folder."""

    emulator: BotAPIEmulator
    uri: str
    workdir: Path
    #: The database server's process when this harness started it (SecantusDB), else None.
    server_pid: int | None = None
    tokens: list[str] = field(default_factory=list)
    _launches: int = 0

    def server_cpu_seconds(self) -> float | None:
        """CPU time the database server used so far, when it is ours to watch."""
        return None if self.server_pid is None else cpu_seconds(self.server_pid)

    def add_bots(self, count: int) -> None:
        """Make sure the emulator knows at least ``count`` bots."""
        while len(self.tokens) < count:
            bot = self.emulator.add_bot(f"bench{len(self.tokens) + 1}_bot")
            self.tokens.append(bot.token)

    async def launch(
        self, contender: Contender, bots: int, router: str, database: str
    ) -> ContenderProcess:
        """Start ``contender`` with the first ``bots`` bots, their old updates dropped."""
        self.add_bots(bots)
        self._launches += 1
        workdir = self.workdir / f"{self._launches:03d}-{contender.name}"
        workdir.mkdir(parents=True)
        tokens = self.tokens[:bots]
        for token in tokens:  # a previous contender's leftovers must not count as work
            self.emulator.bot(token).drop_pending()
        launch = Launch(tokens, router, database, self.uri, self.emulator.url, workdir)
        argv, env = contender.prepare(launch)
        log = workdir / "output.log"
        with log.open("wb") as output:
            process = await asyncio.create_subprocess_exec(
                *argv,
                cwd=workdir,
                env=contender_env(env),
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        return ContenderProcess(contender.name, process, log)

    def polls_made(self, tokens: Sequence[str]) -> list[int]:
        """How many ``getUpdates`` calls each bot has made so far."""
        return [self.emulator.calls(token, "getUpdates") for token in tokens]

    async def wait_all_polling(
        self,
        process: ContenderProcess,
        tokens: Sequence[str],
        before: Sequence[int],
        timeout: float,
    ) -> bool:
        """Wait until every bot made a ``getUpdates`` call since ``before``; False on timeout."""
        deadline = time.monotonic() + timeout
        waiting = list(zip(tokens, before, strict=True))
        while waiting:
            waiting = [
                (token, calls)
                for token, calls in waiting
                if self.emulator.calls(token, "getUpdates") <= calls
            ]
            if not waiting:
                return True
            process.check_alive()
            if time.monotonic() > deadline:
                return False
            # Checking 10,000 bots takes the emulator's own process 10 ms: not 20 times a second.
            await asyncio.sleep(0.05 if len(waiting) < 100 else 0.25)
        return True

    async def drop_database(self, name: str) -> None:
        client: AsyncMongoClient[Any] = AsyncMongoClient(self.uri)
        try:
            await client.drop_database(name)
        finally:
            await client.close()


@contextlib.asynccontextmanager
async def open_world(workdir: Path, uri: str | None) -> AsyncIterator[World]:
    """The emulator on this loop, and ``uri`` or a fresh in-memory SecantusDB."""
    server = None
    if not uri:
        server = SecantusServer()
        server.spawn()  # on the loop's thread: the server dies with it (see SecantusServer)
        await asyncio.to_thread(server.wait_ready)
        uri = server.uri
    try:
        async with BotAPIEmulator() as emulator:
            pid = server.process.pid if server is not None and server.process else None
            yield World(emulator, uri, workdir, server_pid=pid)
    finally:
        if server is not None:
            await asyncio.to_thread(server.stop)


def contender_env(extra: dict[str, str]) -> dict[str, str]:
    """A contender's environment: this one, the repository importable, and ``extra``."""
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


def python() -> str:
    """The interpreter running the benchmarks, for the contenders too."""
    return sys.executable
