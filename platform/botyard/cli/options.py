"""Arguments and options shared by the commands, and loading the registry for a database
command.

Every command takes the registry as its first argument, ``./botyard.yaml`` when
left out (or ``$BOTYARD_REGISTRY``), and ``--log-level``/``--log-format``
(``$BOTYARD_LOG_LEVEL``/``$BOTYARD_LOG_FORMAT``). Every other option can be set
from the environment as ``BOTYARD_<COMMAND>_<OPTION>`` (click's
``auto_envvar_prefix``, set on the top-level group).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import click

from botyard.database.documents import Clock, utcnow
from botyard.logs import TokenRedactingFilter, configure_logging
from botyard.registry.loader import load_registry
from botyard.registry.models import Registry

ENV_PREFIX = "BOTYARD"
DEFAULT_REGISTRY = "botyard.yaml"
REGISTRY_VARIABLE = f"{ENV_PREFIX}_REGISTRY"
_REDACTOR = "botyard.redactor"


@dataclass(frozen=True)
class CommandEnvironment:
    """What a program calling the command line may hand it: ``main(obj=CommandEnvironment(...))``.

    Tests pass a fake clock this way; without one, commands tell the real time.
    """

    clock: Clock = utcnow


def command_clock() -> Clock:
    """The clock of the command running now: the caller's, or the real one."""
    environment = click.get_current_context().find_object(CommandEnvironment)
    return utcnow if environment is None else environment.clock


registry_argument = click.argument(
    "registry_path",
    metavar="[REGISTRY]",
    required=False,
    default=DEFAULT_REGISTRY,
    envvar=REGISTRY_VARIABLE,
    type=click.Path(path_type=Path, dir_okay=False),
)

Command = TypeVar("Command", bound=Callable[..., Any])


class RegistryGroup(click.Group):
    """A group whose first argument is REGISTRY: when the first word already names a
    subcommand, the registry is left out, and the default one is meant."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] in self.commands:
            args = [os.environ.get(REGISTRY_VARIABLE, DEFAULT_REGISTRY), *args]
        return super().parse_args(ctx, args)


def logging_options(default_level: str = "WARNING") -> Callable[[Command], Command]:
    """``--log-level``, ``--log-format`` and ``--debug-logger`` for a command; logging is
    configured before the command runs, and :func:`command_redactor` returns its redactor."""

    def decorate(command: Command) -> Command:
        @functools.wraps(command)
        def configured(
            *args: Any,
            log_level: str | None,
            log_format: str,
            debug_loggers: tuple[str, ...],
            **kwargs: Any,
        ) -> Any:
            click.get_current_context().meta[_REDACTOR] = configure_logging(
                log_level or default_level,
                debug_loggers,
                "json" if log_format == "json" else "text",
            )
            return command(*args, **kwargs)

        options = [
            click.option(
                "--log-level",
                type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
                envvar=f"{ENV_PREFIX}_LOG_LEVEL",
                help=f"Lowest level logged.  [default: {default_level}]",
            ),
            click.option(
                "--log-format",
                type=click.Choice(["text", "json"], case_sensitive=False),
                default="text",
                show_default=True,
                envvar=f"{ENV_PREFIX}_LOG_FORMAT",
                help="json: one JSON object per line (time, level, logger, message, and bot, "
                "update_id, chat_id where known).",
            ),
            click.option(
                "--debug-logger",
                "debug_loggers",
                multiple=True,
                metavar="LOGGER",
                help="Let this library logger (e.g. pymongo) log at --log-level too; libraries "
                "are capped at INFO otherwise. Their DEBUG output may contain users' data.",
            ),
        ]
        decorated: Callable[..., Any] = configured
        for option in reversed(options):
            decorated = option(decorated)
        return cast(Command, decorated)

    return decorate


def command_redactor() -> TokenRedactingFilter:
    """The log redactor :func:`logging_options` made for the running command."""
    redactor: TokenRedactingFilter = click.get_current_context().meta[_REDACTOR]
    return redactor


def load_quietly(path: Path) -> Registry:
    """The registry for a database command: tokens optional (only a bot's hooks need its
    token), and the file's tokens redacted from every log line."""
    registry = load_registry(path, require_tokens=False)
    command_redactor().remember(bot.token_value for bot in registry.bots if bot.token)
    return registry
