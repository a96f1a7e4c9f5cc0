"""Arguments shared by the commands, and loading the registry with clean errors."""

from __future__ import annotations

from pathlib import Path

import click

from botyard.config import Registry
from botyard.registry import RegistryError, load_registry

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
