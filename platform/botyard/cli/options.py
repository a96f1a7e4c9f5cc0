"""Arguments shared by the commands, and loading the registry with clean errors."""

from __future__ import annotations

from pathlib import Path

import click

from botyard.logs import configure_logging
from botyard.registry.loader import RegistryError, load_registry
from botyard.registry.models import BotConfig, Registry

registry_argument = click.argument(
    "registry_path",
    metavar="REGISTRY",
    type=click.Path(path_type=Path, dir_okay=False),
)


def load_or_exit(path: Path, *, require_tokens: bool = True) -> Registry:
    """Load the registry, or print every problem found and exit with status 1."""
    try:
        return load_registry(path, require_tokens=require_tokens)
    except RegistryError as error:
        click.echo(f"error: invalid registry\n{error}", err=True)
        raise SystemExit(1) from None


def load_quietly(path: Path) -> Registry:
    """The registry for a database command: tokens optional (only a bot's hooks need its
    token), warnings only, and the file's tokens redacted from every log line."""
    redactor = configure_logging("WARNING")
    registry = load_or_exit(path, require_tokens=False)
    redactor.remember(bot.token_value for bot in registry.bots if bot.token)
    return registry


def bot_or_exit(registry: Registry, name: str) -> BotConfig:
    """The registry's bot called ``name``, or a message listing the known ones and exit 1."""
    try:
        return registry.bot(name)
    except KeyError as error:
        click.echo(f"error: {error.args[0]}", err=True)
        raise SystemExit(1) from None
