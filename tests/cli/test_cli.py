"""The command line's own surface: help, version, schema, and the README's key table."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from botyard import __version__
from botyard.cli import COMMANDS, main

from e2e import REPO, copy_example_bots


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"botyard, version {__version__}"


def _commands() -> dict[str, click.Command]:
    context = click.Context(main)
    found = {name: main.get_command(context, name) for name in main.list_commands(context)}
    return {name: command for name, command in found.items() if command is not None}


def test_every_command_has_help() -> None:
    runner = CliRunner()
    overview = runner.invoke(main, ["--help"])
    assert overview.exit_code == 0
    commands = _commands()
    assert set(commands) == set(COMMANDS)
    for name, command in commands.items():
        assert command.help, f"botyard {name} has no help text"
        assert name in overview.output
        # the overview lists a command without importing it: its summary must not drift
        assert COMMANDS[name][1] == command.get_short_help_str(limit=1000)
        result = runner.invoke(main, [name, "--help"])
        assert result.exit_code == 0, result.output
        assert "Usage: " in result.output


def test_schema_is_json_schema_of_the_registry() -> None:
    result = CliRunner().invoke(main, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert {"storage", "defaults", "cleanup", "bots"} <= set(schema["properties"])
    assert schema["additionalProperties"] is False


def test_check_accepts_the_example_registry(monkeypatch: Any) -> None:
    for name in ("REGISTRATION", "QUESTIONNAIRE", "ECHO"):
        monkeypatch.setenv(f"{name}_TOKEN", f"12345678{len(name)}:AA" + "x" * 33)
    result = CliRunner().invoke(main, ["check", str(REPO / "botyard.yaml")])
    assert result.exit_code == 0, result.output
    assert "OK: 3 bot(s)" in result.output
    assert "x" * 33 not in result.output


def test_check_warns_about_tokens_that_are_unset_empty_or_malformed(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """After `cp .env.example .env` every token is empty: the other checks still run."""
    copy_example_bots(tmp_path)
    shutil.copy(REPO / "botyard.yaml", tmp_path)
    env_file = (REPO / ".env.example").read_text()
    (tmp_path / ".env").write_text(env_file.replace("ECHO_TOKEN=\n", "ECHO_TOKEN=123:AA\n"))
    for name in ("REGISTRATION", "QUESTIONNAIRE", "ECHO"):
        monkeypatch.delenv(f"{name}_TOKEN", raising=False)
    result = CliRunner().invoke(main, ["check", str(tmp_path / "botyard.yaml")])
    assert result.exit_code == 0, result.output
    assert "OK: 3 bot(s), 3 enabled" in result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning: ")]
    assert [re.sub(r"^warning: \S+:\d+: ", "", line) for line in warnings] == [
        "bots[0] (registration).token: environment variable REGISTRATION_TOKEN is empty "
        "(export it with the bot's token, or set it in .env next to botyard.yaml); "
        "botyard run needs this token",
        "bots[1] (questionnaire).token: environment variable QUESTIONNAIRE_TOKEN is empty "
        "(export it with the bot's token, or set it in .env next to botyard.yaml); "
        "botyard run needs this token",
        "bots[2] (echo).token: malformed token (expected '<digits>:<secret>', got 6 characters, "
        "the bot id before ':' has 3 digits, expected 5 to 20, the secret after ':' has 2 "
        "characters, expected 30 to 64); botyard run needs this token",
    ]

    (tmp_path / "botyard.yaml").write_text(
        (REPO / "botyard.yaml").read_text().replace("bots.echo:router", "bots.nope:router")
    )
    broken = CliRunner().invoke(main, ["check", str(tmp_path / "botyard.yaml")])
    assert broken.exit_code == 1
    assert "error: invalid registry" in broken.output
    assert "cannot import bots.nope" in broken.output
    assert ".token: " not in broken.output.partition("error: invalid registry")[2]


def test_check_of_a_missing_file_says_so(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["check", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 1
    assert "nope.yaml" in result.output


def _schema_keys(schema: dict[str, Any]) -> set[str]:
    definitions = schema.get("$defs", {})
    keys: set[str] = set()

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.get("properties", {}).items():
            keys.add(f"{prefix}{key}")
            refs = [value, *value.get("anyOf", []), value.get("items", {})]
            for ref in refs:
                target = ref.get("$ref", "").rsplit("/", 1)[-1]
                if target in definitions:
                    child = f"{prefix}{key}[]." if "items" in value else f"{prefix}{key}."
                    walk(definitions[target], child)

    walk(schema, "")
    return keys


def test_readme_documents_every_registry_key() -> None:
    readme = (REPO / "README.md").read_text()
    result = CliRunner().invoke(main, ["schema"])
    documented = set(re.findall(r"`([a-z_]+(?:\[\])?(?:\.[a-z_]+(?:\[\])?)*)`", readme))
    leaves = {key for key in _schema_keys(json.loads(result.output)) if "." in key}

    def suffixes(key: str) -> set[str]:
        """A model used under two keys (defaults.x.y, bots[].x.y) is documented once as x.y."""
        parts = key.split(".")
        return {".".join(parts[start:]) for start in range(len(parts) - 1)}

    missing = sorted(key for key in leaves if not suffixes(key) & documented)
    assert not missing, f"README does not document: {missing}"


def _leaf_commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += _leaf_commands(command, (*path, name))
        else:
            found.append((*path, name))
    return found


def test_every_command_takes_log_level_and_log_format() -> None:
    commands = _leaf_commands(main)
    assert ("states", "purge") in commands
    for path in commands:
        command: click.Command = main
        for name in path:
            assert isinstance(command, click.Group)
            found = command.get_command(click.Context(command), name)
            assert found is not None
            command = found
        options = {option for param in command.params for option in param.opts}
        assert {"--log-level", "--log-format"} <= options, f"botyard {' '.join(path)}"


def _write_registry(folder: Path) -> None:
    (folder / "botyard.yaml").write_text(
        "storage:\n  uri: mongodb://127.0.0.1:1\n"
        "bots:\n  - name: shop\n    token: ${SHOP_TOKEN}\n    routers: [shop:router]\n"
    )
    (folder / "shop.py").write_text("from aiogram import Router\nrouter = Router()\n")


def test_the_registry_defaults_to_botyard_yaml_here_or_botyard_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_registry(tmp_path)
    monkeypatch.setenv("SHOP_TOKEN", "123456789:AA" + "x" * 33)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["check"])
    assert result.exit_code == 0, result.output
    assert "OK: 1 bot(s)" in result.output

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    missing = CliRunner().invoke(main, ["check"])
    assert missing.exit_code == 1
    assert "botyard.yaml" in missing.output
    monkeypatch.setenv("BOTYARD_REGISTRY", str(tmp_path / "botyard.yaml"))
    assert CliRunner().invoke(main, ["check"]).exit_code == 0


def test_a_group_whose_registry_is_left_out_takes_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    # the default registry does not exist: the error names it, not a missing subcommand
    result = CliRunner().invoke(main, ["states", "stats"])
    assert result.exit_code == 1, result.output
    assert "botyard.yaml" in result.output
    assert "No such command" not in result.output


def test_options_are_read_from_botyard_environment_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BOTYARD_SCHEMA_INDENT", "7")
    result = CliRunner().invoke(main, ["schema"])
    assert result.exit_code == 0, result.output
    assert '\n       "' in result.output, "indented by 7 from BOTYARD_SCHEMA_INDENT"
    monkeypatch.setenv("BOTYARD_LOG_FORMAT", "xml")
    wrong = CliRunner().invoke(main, ["schema"])
    assert wrong.exit_code == 2
    assert "'xml' is not one of 'text', 'json'" in wrong.output


LIGHT_COMMANDS = [["--help"], ["--version"], ["schema"], ["check", "missing.yaml"]]


@pytest.mark.parametrize("arguments", LIGHT_COMMANDS, ids=" ".join)
def test_light_commands_import_no_aiogram_beanie_or_pymongo(
    arguments: list[str], tmp_path: Path
) -> None:
    """In a fresh interpreter: the command runs as ``botyard`` would, then the heavy
    libraries it needs none of are looked for in ``sys.modules``."""
    script = (
        "import sys\n"
        "from botyard.cli import main\n"
        "try:\n"
        "    main(sys.argv[1:], prog_name='botyard')\n"
        "except SystemExit as exit:\n"
        "    print('exit', exit.code, file=sys.stderr)\n"
        "print(sorted({name.split('.')[0] for name in sys.modules}), file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, *arguments],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    *_, exit_line, modules_line = result.stderr.strip().splitlines()
    expected = 1 if arguments[0] == "check" else 0
    assert exit_line == f"exit {expected}", result.stderr
    loaded = set(ast.literal_eval(modules_line))
    assert {"botyard", "click"} <= loaded
    assert not {"aiogram", "beanie", "pymongo"} & loaded, result.stderr
