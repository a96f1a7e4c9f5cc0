"""How every ``botyard`` command fails: a :class:`~botyard.errors.BotyardError` becomes
``error: <message>`` on stderr and exit status 1, without a traceback.

Commands raise; only :class:`ReportingGroup`, the top-level group, prints. An
invalid registry lists its problems on the lines after ``error: invalid registry``.
Wrong arguments stay click's usage errors (exit status 2); any other exception
is a bug: its traceback is logged, so it is redacted like every log line (the
registry's tokens, webhook secrets, database error details), and the status is 1.
"""

from __future__ import annotations

import logging
from typing import Any

import click

from botyard.errors import BotyardError
from botyard.registry.models import RegistryError

__all__ = ["ReportingGroup", "describe"]

logger = logging.getLogger("botyard.cli")


def describe(error: BotyardError) -> str:
    """The text printed for ``error``."""
    if isinstance(error, RegistryError):
        return f"error: invalid registry\n{error}"
    return f"error: {error}"


class ReportingGroup(click.Group):
    """A group whose commands (and their subcommands) report a ``BotyardError`` in one place."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BotyardError as error:
            click.echo(describe(error), err=True)
            ctx.exit(1)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception:
            logger.critical("botyard failed on a bug (please report it):", exc_info=True)
            ctx.exit(1)
