"""Running ``botyard run`` as a real subprocess against the emulator and the database.

``BotyardProcess`` starts the command line exactly as an operator would, keeps
its log, and on exit checks that no token the test knows of ever appeared in it.
``World`` is a registry in a temporary folder with its bots in the emulator; test
modules use it through the ``emulator`` and ``world`` fixtures (import them).
"""

from __future__ import annotations

import os
import re
import runpy
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from botyard.database.embedded import free_port
from botyard.emulator import EmulatorThread

REPO = Path(__file__).resolve().parent.parent
BOTYARD = [sys.executable, "-m", "botyard"]

# The questionnaire bot's own texts, so that tests follow the bot.
_QUESTIONNAIRE = runpy.run_path(str(REPO / "bots" / "questionnaire" / "__init__.py"))
QUESTIONS: list[str] = list(_QUESTIONNAIRE["QUESTIONS"].values())
THANKS: str = _QUESTIONNAIRE["THANKS"]
#: Where the questionnaire saves completed answers (its own collection).
ANSWERS = "questionnaire_answers"


def saved_answers(documents: Iterable[dict[str, Any]]) -> dict[int, list[dict[str, str]]]:
    """Documents of :data:`ANSWERS` as each user's answers, in the order they were saved."""
    found: dict[int, list[dict[str, str]]] = {}
    for document in sorted(documents, key=lambda d: d["_id"]):
        assert document["chat_id"] == document["user_id"], "a private chat"
        found.setdefault(document["user_id"], []).append(document["answers"])
    return found


def assert_conversations_stored(world: World, users: Iterable[int], name: str) -> None:
    """Each user answered "red/cat/soup <user>", saved once, and registered as
    ``name.format(user)``; a completed questionnaire leaves no FSM state."""
    questionnaire = world.records("questionnaire")
    answers = world.answers("questionnaire")
    registration = world.records("registration")
    for user in users:
        assert user not in questionnaire
        assert answers[user] == [{"q1": f"red {user}", "q2": f"cat {user}", "q3": f"soup {user}"}]
        assert registration[user]["data"] == {"name": name.format(user)}
        assert registration[user]["state"] is None


def copy_example_bots(directory: Path) -> None:
    """Put the repository's example bots beside a test registry."""
    shutil.copytree(REPO / "bots", directory / "bots", ignore=shutil.ignore_patterns("__pycache__"))


class BotyardProcess:
    """One ``botyard`` subprocess, with its combined output collected in memory."""

    def __init__(
        self,
        args: Iterable[str],
        *,
        env: dict[str, str],
        cwd: Path,
        secrets: Iterable[str] = (),
        program: Iterable[str] = BOTYARD,
        inherit_env: bool = True,
    ) -> None:
        self.args = [*program, *args]
        inherited = os.environ if inherit_env else {}
        self.env = {**inherited, **env, "PYTHONUNBUFFERED": "1"}
        self.cwd = cwd
        self.secrets = set(secrets)
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> BotyardProcess:
        self.process = subprocess.Popen(
            self.args,
            env=self.env,
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._collect, daemon=True).start()
        return self

    def _collect(self) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._lock:
                self._lines.append(line)

    @property
    def output(self) -> str:
        with self._lock:
            return "".join(self._lines)

    def wait_for_log(self, pattern: str, *, timeout: float = 30.0, count: int = 1) -> str:
        """Wait until ``pattern`` (a regex) matched ``count`` lines; return the last match."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            matches = [line for line in self.output.splitlines() if regex.search(line)]
            if len(matches) >= count:
                return matches[count - 1]
            if self.process is not None and self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(
            f"no log line matching {pattern!r} (x{count}) within {timeout}s; "
            f"exit code {self.process.poll() if self.process else None}; output:\n{self.output}"
        )

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float = 60.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait: the exit code of a graceful shutdown."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"botyard did not exit within {timeout}s of SIGTERM; output:\n{self.output}"
            ) from None

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def assert_no_secrets(self) -> None:
        output = self.output
        leaked = [secret for secret in self.secrets if secret and secret in output]
        assert not leaked, f"{len(leaked)} token(s) appear in botyard's output"

    def __enter__(self) -> BotyardProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()
        self.assert_no_secrets()


SLOW_BOT = '''
"""A test bot whose "slow N" messages take N seconds, to have updates in flight."""
import asyncio
import logging

from aiogram import F, Router
from aiogram.fsm.context import FSMContext
from aiogram.types import Message

log = logging.getLogger("slowbot")


def router() -> Router:
    slow = Router()

    @slow.message(F.text.startswith("slow"))
    async def take_time(message: Message, state: FSMContext) -> None:
        await state.update_data({message.text.replace(" ", "_"): True})
        log.warning("slow handler started: %s", message.text)
        await asyncio.sleep(float(message.text.split()[1]))
        await message.answer(f"done {message.text}")

    @slow.message(F.text == "whoami")
    async def whoami(message: Message, bot_config, database) -> None:
        await message.answer(f"{bot_config.name} on {database.name}")

    @slow.message(F.text)
    async def quick(message: Message) -> None:
        await message.answer(f"ok {message.text}")

    return slow
'''


class World:
    """A registry in a temporary folder, its bots in the emulator, and the database."""

    def __init__(self, directory: Path, emulator: EmulatorThread, mongo_uri: str, db: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.emulator = emulator
        self.mongo_uri = mongo_uri
        self.database_name = db
        self.tokens: dict[str, str] = {}
        self.port = free_port()  # the webhook server's, for bots in webhook mode
        self.path = directory / "botyard.yaml"
        copy_example_bots(directory)
        (directory / "slowbot.py").write_text(SLOW_BOT)

    def token(self, name: str) -> str:
        if name not in self.tokens:
            self.tokens[name] = self.emulator.add_bot(username=f"{name}_{self.database_name}").token
        return self.tokens[name]

    def write(
        self,
        bots: dict[str, str],
        extra: str = "",
        mode: str = "polling",
        webhook: dict[str, str] | None = None,
    ) -> None:
        """Write the registry: ``bots`` maps a bot name to its router spec.

        With ``mode="webhook"`` every bot takes its updates by webhook, from a
        server on ``self.port``; ``webhook`` overrides or adds settings of that section.
        """
        for name in bots:
            self.token(name)
        if mode == "webhook":
            url = f"127.0.0.1:{self.port}"
            settings = {"base_url": f"http://{url}", "listen": url, **(webhook or {})}
            extra += "webhook:\n" + "".join(
                f"  {key}: {value}\n" for key, value in settings.items()
            )
        entries = "".join(
            f"  - name: {name}\n"
            f"    token: ${{{name.upper()}_TOKEN}}\n"
            f"    routers: [{spec}]\n"
            f"    api_server: ${{BOT_API_SERVER}}\n"
            f"    mode: {mode}\n"
            for name, spec in bots.items()
        )
        self.path.write_text(
            "storage:\n"
            "  uri: ${MONGODB_URI}\n"
            f"  database: {self.database_name}\n"
            "defaults:\n"
            "  state_ttl: 1d\n"
            f"{extra}"
            f"bots:\n{entries}"
        )

    def env(self) -> dict[str, str]:
        return {
            "MONGODB_URI": self.mongo_uri,
            "BOT_API_SERVER": self.emulator.url,
            **{f"{name.upper()}_TOKEN": token for name, token in self.tokens.items()},
        }

    def botyard(self, *args: str) -> BotyardProcess:
        return BotyardProcess(
            ["run", str(self.path), *args],
            env=self.env(),
            cwd=self.directory,
            secrets=self.tokens.values(),
        )

    def say(self, bot: str, user: int, text: str) -> dict[str, Any]:
        return self.emulator.send_message(self.tokens[bot], user, text)

    def reply(self, bot: str, user: int, timeout: float = 20.0) -> str:
        message = self.emulator.wait_for_reply(self.tokens[bot], user, timeout=timeout)
        assert isinstance(message, dict)
        return str(message["text"])

    def collection(self, name: str, query: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        with MongoClient[dict[str, Any]](self.mongo_uri) as client:
            return list(client[self.database_name][name].find(query or {}))

    def records(self, namespace: str) -> dict[int, dict[str, Any]]:
        """The bot's FSM records by user id."""
        found = self.collection("fsm_records", {"namespace": namespace})
        return {doc["user_id"]: doc for doc in found}

    def answers(self, bot: str) -> dict[int, list[dict[str, str]]]:
        """The questionnaires the bot saved (``questionnaire_answers``), by user, oldest first."""
        bot_id = int(self.tokens[bot].partition(":")[0])
        return saved_answers(self.collection(ANSWERS, {"bot_id": bot_id}))

    def wait_all_running(self, process: BotyardProcess, names: list[str]) -> None:
        for name in names:
            process.wait_for_log(rf"bot={name} status=running", timeout=60)


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorThread]:
    with EmulatorThread() as thread:
        yield thread


@pytest.fixture
def world(
    tmp_path: Path, emulator: EmulatorThread, mongo_uri: str, database_name: str
) -> Iterator[World]:
    yield World(tmp_path, emulator, mongo_uri, database_name)
    with MongoClient[dict[str, Any]](mongo_uri) as client:
        client.drop_database(database_name)
