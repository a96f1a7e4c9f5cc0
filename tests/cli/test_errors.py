"""How commands fail: ``error: <message>`` on stderr, exit status 1, no traceback, one
wording for every command."""

from __future__ import annotations

import gc
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from botyard.cli import main
from botyard.cli.errors import ReportingGroup
from botyard.database.embedded import EmbeddedStoreError
from botyard.errors import BotyardError
from botyard.logs import configure_logging
from botyard.ops.http_server import ListenError
from botyard.registry.models import RegistryError

TOKEN = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"

VALID = f"""\
storage:
  uri: mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=100
  database: errors
bots:
  - name: poller
    token: "{TOKEN}"
    routers: [nowhere.to_be_found:router]
"""


@pytest.fixture(autouse=True)
def _gc_thresholds() -> Iterator[None]:
    """``botyard run`` pauses full collections for its process; give them back."""
    usual = gc.get_threshold()
    yield
    gc.set_threshold(*usual)


def _invoke(args: list[str]) -> Result:
    return CliRunner().invoke(main, args)


def _assert_error(result: Result, message: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"error: {message}"), result.output
    assert not any(line.startswith("Error:") for line in result.output.splitlines())
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.fixture
def invalid(tmp_path: Path) -> Path:
    path = tmp_path / "broken.yaml"
    path.write_text("storage: {database: x}\nbots: 5\n")
    return path


@pytest.fixture
def valid(tmp_path: Path) -> Path:
    path = tmp_path / "botyard.yaml"
    path.write_text(VALID)
    return path


#: Every command that reads a registry, with the options it needs to get that far.
REGISTRY_COMMANDS = [
    ["check", "{registry}"],
    ["run", "{registry}"],
    ["sandbox", "{registry}", "--port", "0"],
    ["cleanup", "{registry}"],
    ["states", "{registry}", "stats"],
    ["states", "{registry}", "purge", "--bot", "poller", "--yes"],
    ["webhook", "rotate", "{registry}"],
    ["migrate", "{registry}", "status"],
    ["migrate", "{registry}", "up"],
    ["migrate", "{registry}", "down"],
    [
        *("import", "{registry}", "--from", "seed", "--uri", "mongodb://127.0.0.1:1"),
        *("--database", "old", "--collection", "fsm", "--bot", "poller"),
    ],
]


@pytest.mark.parametrize("command", REGISTRY_COMMANDS, ids=lambda args: " ".join(args[:3]))
def test_every_command_reports_an_invalid_registry_alike(command: list[str], invalid: Path) -> None:
    result = _invoke([part.format(registry=invalid) for part in command])
    _assert_error(result, "invalid registry\n")
    assert "broken.yaml" in result.output
    assert "bots" in result.output


@pytest.mark.parametrize(
    "command",
    [
        ["cleanup", "{registry}", "--bot", "nobody"],
        ["states", "{registry}", "purge", "--bot", "nobody", "--yes"],
        ["webhook", "rotate", "{registry}", "--bot", "nobody"],
    ],
    ids=lambda args: " ".join(args[:3]),
)
def test_every_command_reports_an_unknown_bot_alike(command: list[str], valid: Path) -> None:
    result = _invoke([part.format(registry=valid) for part in command])
    _assert_error(result, "no bot named 'nobody' in botyard.yaml (bots: poller)\n")


def test_run_reports_a_router_it_cannot_import(valid: Path) -> None:
    result = _invoke(["run", str(valid), "--no-watch"])
    _assert_error(result, "invalid registry\n")
    assert "nowhere" in result.output


def test_webhook_rotate_refuses_a_polling_bot(valid: Path) -> None:
    result = _invoke(["webhook", "rotate", str(valid), "--bot", "poller"])
    _assert_error(result, "not in webhook mode: poller (set mode: webhook first)\n")
    result = _invoke(["webhook", "rotate", str(valid)])
    _assert_error(result, "no bot in botyard.yaml uses mode: webhook\n")


def test_migrate_reports_a_missing_folder(valid: Path, tmp_path: Path) -> None:
    result = _invoke(["migrate", str(valid), "status", "--path", str(tmp_path / "none")])
    _assert_error(result, f"--path {tmp_path / 'none'}: no such folder\n")


# --- the one place that reports -------------------------------------------------------


@click.group(cls=ReportingGroup)
def _cli() -> None:
    pass


@_cli.group("nested")
def _nested() -> None:
    pass


@_nested.command("fail")
@click.argument("kind")
def _fail(kind: str) -> None:
    errors: dict[str, Exception] = {
        "listen": ListenError("cannot listen on 127.0.0.1:1: Address already in use"),
        "embedded": EmbeddedStoreError("the embedded store needs SecantusDB"),
        "registry": RegistryError(["bots[0].name: missing", "bots[1].token: missing"]),
        "plain": BotyardError("refused"),
        "token-bug": RuntimeError(f"a bug near {TOKEN}"),
    }
    configure_logging()  # as every command's logging options do
    raise errors[kind]


@pytest.mark.parametrize(
    ("kind", "output"),
    [
        ("listen", "error: cannot listen on 127.0.0.1:1: Address already in use\n"),
        ("embedded", "error: the embedded store needs SecantusDB\n"),
        (
            "registry",
            "error: invalid registry\n2 problems\nbots[0].name: missing\nbots[1].token: missing\n",
        ),
        ("plain", "error: refused\n"),
    ],
)
def test_a_botyard_error_in_a_subcommand_is_one_message_and_status_1(
    kind: str, output: str
) -> None:
    result = CliRunner().invoke(_cli, ["nested", "fail", kind])
    assert result.exit_code == 1
    assert result.output == output


def test_any_other_exception_is_a_bug_whose_traceback_is_logged_redacted() -> None:
    result = CliRunner().invoke(_cli, ["nested", "fail", "token-bug"])
    assert result.exit_code == 1
    assert "CRITICAL botyard.cli: botyard failed on a bug" in result.output
    assert "Traceback (most recent call last)" in result.output
    assert "RuntimeError: a bug near 123456789:***" in result.output
    assert TOKEN not in result.output
    assert "error:" not in result.output


def test_usage_errors_stay_clicks_with_status_2(valid: Path) -> None:
    result = _invoke(["states", str(valid), "purge", "--bot", "poller", "--older-than", "soon"])
    assert result.exit_code == 2
    assert "Usage:" in result.output


def test_run_with_mongodb_down_says_where_and_what_to_check(tmp_path: Path) -> None:
    """A subprocess, to see everything ``botyard run`` prints: logs included."""
    (tmp_path / "quiet.py").write_text("from aiogram import Router\nrouter = Router()\n")
    path = tmp_path / "botyard.yaml"
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path.write_text(
        f"storage:\n  uri: mongodb://botyard:s3cret-pw@127.0.0.1:{port}/botyard\n"
        "  timeout: 1s\n  database: down\n"
        f"bots:\n  - name: quiet\n    token: '{TOKEN}'\n    routers: [quiet:router]\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "botyard", "run", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: cannot reach MongoDB at 127.0.0.1:{port} ("), lines
    assert "check that it is running" in lines[-1]
    assert "Traceback" not in done.stderr
    assert "s3cret-pw" not in done.stderr
    assert len(lines) <= 3, lines  # the error, and at most the start-up log lines
