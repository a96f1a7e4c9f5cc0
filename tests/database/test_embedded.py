"""``botyard run`` with no ``storage.uri``: the embedded SecantusDB under ``.botyard/``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import venv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from botyard.database.embedded import INSTALL_HINT, SERVER_COMMAND, SecantusServer
from botyard.emulator import EmulatorThread

from e2e import ANSWERS, QUESTIONS, THANKS, BotyardProcess, copy_example_bots, saved_answers

pytestmark = pytest.mark.e2e

WARNING = "storage.uri is not set: using an embedded SecantusDB"
REGISTRY = """\
storage:
  database: botyard
bots:
  - name: questionnaire
    token: ${QUESTIONNAIRE_TOKEN}
    routers: [bots.questionnaire:router]
    api_server: ${BOT_API_SERVER}
"""


class Project:
    """A registry without ``storage.uri`` in a fresh folder, its bot in the emulator."""

    def __init__(self, directory: Path, emulator: EmulatorThread) -> None:
        self.directory = directory
        self.emulator = emulator
        copy_example_bots(directory)
        self.path = directory / "botyard.yaml"
        self.path.write_text(REGISTRY)
        self.token = emulator.add_bot().token
        self.home = directory / ".botyard"

    def botyard(self) -> BotyardProcess:
        return BotyardProcess(
            ["run", str(self.path)],
            env={"QUESTIONNAIRE_TOKEN": self.token, "BOT_API_SERVER": self.emulator.url},
            cwd=self.directory,
            secrets=[self.token],
        )

    def ask(self, user: int, text: str) -> str:
        """Send ``text`` and return the bot's reply, once Telegram has it confirmed."""
        update = self.emulator.send_message(self.token, user, text)
        reply = self.emulator.wait_for_reply(self.token, user, timeout=30)
        assert isinstance(reply, dict)
        deadline = time.monotonic() + 10
        while self.emulator.confirmed_offset(self.token) <= update["update_id"]:
            assert time.monotonic() < deadline, f"update {update['update_id']} never confirmed"
            time.sleep(0.05)
        return str(reply["text"])

    def pids(self) -> dict[str, int]:
        text = (self.home / "embedded.pid").read_text()
        return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", text)}


def server_running(pid: int) -> bool:
    try:
        return SERVER_COMMAND in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
    except OSError:
        return False


def wait_until_gone(pid: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while server_running(pid):
        assert time.monotonic() < deadline, f"SecantusDB pid {pid} still runs after {timeout}s"
        time.sleep(0.1)


def embedded_uri(botyard: BotyardProcess) -> str:
    line = botyard.wait_for_log(WARNING)
    match = re.search(r"(mongodb://\S+?),", line)
    assert match, line
    return match.group(1)


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorThread]:
    with EmulatorThread() as thread:
        yield thread


@pytest.fixture
def project(tmp_path: Path, emulator: EmulatorThread) -> Project:
    return Project(tmp_path / "project", emulator)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="reads process command lines in /proc")
def test_embedded_store_survives_sigkill_and_is_reused(project: Project) -> None:
    user = 7001
    with project.botyard() as first:
        first.wait_for_log(r"bot=questionnaire status=running", timeout=60)
        assert project.ask(user, "/start") == QUESTIONS[0]
        assert project.ask(user, "blue") == QUESTIONS[1]
        pids = project.pids()
        assert pids["botyard"] == first.process.pid  # type: ignore[union-attr]
        assert server_running(pids["server"])
        first.kill()
    assert first.output.count(WARNING) == 1
    assert str(project.home / "data") in first.output
    if sys.platform.startswith("linux"):  # PR_SET_PDEATHSIG: the server follows its botyard
        wait_until_gone(pids["server"])

    with project.botyard() as second:
        uri = embedded_uri(second)
        second.wait_for_log(r"bot=questionnaire status=running", timeout=60)
        assert project.ask(user, "/start") == QUESTIONS[1], "resumes at the question reached"
        assert project.ask(user, "cat") == QUESTIONS[2]
        assert project.ask(user, "pizza") == THANKS
        with MongoClient[dict[str, Any]](uri) as client:
            record = client["botyard"]["fsm_records"].find_one({"user_id": user})
            answers = saved_answers(client["botyard"][ANSWERS].find({"user_id": user}))
        assert record is None, "a completed questionnaire leaves no state"
        assert answers == {user: [{"q1": "blue", "q2": "cat", "q3": "pizza"}]}

        # a second botyard on the same registry is refused and leaves the store alone
        server = project.pids()["server"]
        with project.botyard() as intruder:
            assert intruder.wait(60) == 1
        assert f"another botyard (pid {second.process.pid})" in intruder.output  # type: ignore[union-attr]
        assert "Traceback" not in intruder.output
        assert server_running(server)
        assert project.ask(user, "/start") == QUESTIONS[0]

        assert second.stop() == 0
    assert second.output.count(WARNING) == 1
    assert not server_running(server)
    assert (project.home / "embedded.pid").read_text() == ""


def test_server_left_by_a_killed_run_is_stopped(project: Project) -> None:
    """Without a parent-death signal (macOS), a killed run's server outlives it."""
    leftover = SecantusServer(storage_path=str(project.home / "data"), sync_on_commit=True)
    leftover.start()
    try:
        assert leftover.process is not None
        with MongoClient[dict[str, Any]](leftover.uri) as client:
            client["botyard"]["notes"].insert_one({"_id": "kept"})
        (project.home / "embedded.pid").write_text(
            f"server={leftover.process.pid} botyard=999999999\n"
        )
        process = leftover.process
        with project.botyard() as botyard:
            botyard.wait_for_log(rf"stopping the embedded SecantusDB .*\(pid {process.pid}\)")
            uri = embedded_uri(botyard)
            botyard.wait_for_log(r"bot=questionnaire status=running", timeout=60)
            assert process.poll() is not None
            assert project.ask(7002, "/start") == QUESTIONS[0]
            with MongoClient[dict[str, Any]](uri) as client:
                assert client["botyard"]["notes"].find_one({"_id": "kept"}) == {"_id": "kept"}
            assert botyard.stop() == 0
    finally:
        leftover.kill()


def test_missing_secantusdb_names_the_install_command(project: Project, tmp_path: Path) -> None:
    """A virtual environment without the ``embedded`` extra: no ``secantusd-py`` anywhere."""
    environment = tmp_path / "venv"
    venv.create(environment, with_pip=False)
    site_packages = subprocess.run(
        [
            environment / "bin" / "python",
            "-c",
            "import sysconfig; print(sysconfig.get_path('purelib'))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # botyard and its dependencies from this environment; SecantusDB's command is not installed
    here = subprocess.run(
        [sys.executable, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site_packages, "botyard-dev.pth").write_text(f"import site; site.addsitedir({here!r})\n")
    path = os.pathsep.join(
        folder
        for folder in os.environ.get("PATH", "").split(os.pathsep)
        if folder and not Path(folder, SERVER_COMMAND).exists()
    )
    result = subprocess.run(
        [environment / "bin" / "python", "-m", "botyard", "run", str(project.path)],
        env={
            "PATH": path,
            "QUESTIONNAIRE_TOKEN": project.token,
            "BOT_API_SERVER": project.emulator.url,
        },
        cwd=project.directory,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert f"install it with: {INSTALL_HINT}" in result.stderr
    assert "Traceback" not in result.stderr
    assert project.token not in result.stdout + result.stderr
    assert project.emulator.calls(project.token, "getUpdates") == 0
