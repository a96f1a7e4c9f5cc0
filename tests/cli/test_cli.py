"""The command line's own surface: help, version, schema, and the README's key table."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from botyard import __version__
from botyard.cli import main

from e2e import REPO


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"botyard, version {__version__}"


def test_every_command_has_help() -> None:
    runner = CliRunner()
    overview = runner.invoke(main, ["--help"])
    assert overview.exit_code == 0
    for name, command in main.commands.items():
        assert command.help, f"botyard {name} has no help text"
        assert name in overview.output
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
    documented = set(re.findall(r"`([a-z_]+(?:\[\])?(?:\.[a-z_]+)?)`", readme))
    leaves = {key for key in _schema_keys(json.loads(result.output)) if "." in key}
    missing = sorted(leaves - documented)
    assert not missing, f"README does not document: {missing}"
