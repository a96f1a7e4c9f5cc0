"""Arguments shared by the commands, and loading the registry for a database command."""

from __future__ import annotations

from pathlib import Path

import click

from botyard.logs import configure_logging
from botyard.registry.loader import load_registry
from botyard.registry.models import Registry

registry_argument = click.argument(
    "registry_path",
    metavar="REGISTRY",
    type=click.Path(path_type=Path, dir_okay=False),
)


def load_quietly(path: Path) -> Registry:
    """The registry for a database command: tokens optional (only a bot's hooks need its
    token), warnings only, and the file's tokens redacted from every log line."""
    redactor = configure_logging("WARNING")
    registry = load_registry(path, require_tokens=False)
    redactor.remember(bot.token_value for bot in registry.bots if bot.token)
    return registry
