"""``botyard run``, ``botyard check`` and ``botyard schema``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import click

from botyard.cli.options import command_redactor, logging_options, registry_argument
from botyard.registry.loader import check_registry, load_registry
from botyard.registry.schema import registry_json_schema


@click.command()
@registry_argument
@logging_options(default_level="INFO")
@click.option(
    "--shutdown-timeout",
    type=click.FloatRange(min=0),
    default=25.0,
    show_default=True,
    help="Seconds in-flight updates get to finish on SIGTERM before they are left "
    "unconfirmed for redelivery.",
)
@click.option(
    "--no-watch",
    is_flag=True,
    help="Do not reload when the registry file changes (SIGHUP still reloads).",
)
def run(
    registry_path: Path,
    shutdown_timeout: float,
    no_watch: bool,
) -> None:
    """Run every enabled bot of REGISTRY until SIGINT or SIGTERM.

    SIGHUP, or saving the file, reloads the registry: added bots start, removed
    ones stop, changed ones restart, the others are left alone. An invalid file
    is rejected and the running bots keep going.
    """
    from botyard.runtime.gc_pause import (
        collect_and_freeze,
        pause_full_collections,
        run_resuming_full_collections,
    )
    from botyard.runtime.supervisor import Supervisor

    usual = pause_full_collections()
    redactor = command_redactor()
    registry = load_registry(registry_path)
    supervisor = Supervisor(
        registry,
        shutdown_timeout=shutdown_timeout,
        watch=not no_watch,
        redactor=redactor,
        before_polling=collect_and_freeze,
    )
    raise SystemExit(
        asyncio.run(run_resuming_full_collections(supervisor.run(), supervisor.started, usual))
    )


@click.command()
@registry_argument
@logging_options()
def check(registry_path: Path) -> None:
    """Validate REGISTRY and import every router and hook, without touching the network.

    Exits 0 when the registry is valid, 1 with every problem listed otherwise.
    A token that is unset, empty or malformed is a warning: `botyard run` needs
    it, the commands that never call Telegram do not.
    """
    result = check_registry(registry_path, require_tokens=False)
    for warning in result.warnings:
        click.echo(f"warning: {warning}; botyard run needs this token", err=True)
    click.echo(result.summary)


@click.command()
@logging_options()
@click.option("--indent", type=int, default=2, show_default=True)
def schema(indent: int) -> None:
    """Print the JSON Schema of the registry file (for editors and CI validation)."""
    click.echo(json.dumps(registry_json_schema(), indent=indent))
