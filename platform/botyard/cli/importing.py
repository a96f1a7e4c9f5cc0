"""``botyard import``: the FSM state of other aiogram bots, copied into a registry's bot.

The source is only read. The target is the registry's storage, reached like
``botyard run`` reaches it: the embedded store when ``storage.uri`` is empty
(only while no ``botyard run`` uses it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource
from pymongo.asynchronous.database import AsyncDatabase
from rich.console import Console

from botyard.cleanup.sweep import backstop_grace
from botyard.cli.database import run_on_database
from botyard.cli.options import load_quietly, logging_options, registry_argument
from botyard.cli.progress import progress_bar
from botyard.database.client import mongo_client
from botyard.database.documents import Document
from botyard.importers import (
    FORMATS,
    Aiogram2Source,
    Aiogram3Source,
    ImportReport,
    KeyLayout,
    RecordWriter,
    SeedSource,
    Source,
    import_records,
)
from botyard.importers.source import source_label
from botyard.registry.durations import format_duration
from botyard.storage import prepare_database
from botyard.tokens import mask_uri

_KEY_OPTIONS = ("prefix", "separator", "with_bot_id", "with_destiny", "with_business_connection_id")


@click.command("import")
@registry_argument
@logging_options()
@click.option(
    "--from",
    "source_format",
    type=click.Choice(FORMATS),
    required=True,
    help="aiogram: aiogram 3 MongoStorage/PyMongoStorage; aiogram2: aiogram 2's contrib "
    "MongoStorage (aiogram_state + aiogram_data); seed: {user_id, chat_id, state, data}.",
)
@click.option("--uri", required=True, metavar="URI", help="The old bot's MongoDB (only read).")
@click.option("--database", required=True, metavar="DB", help="The old bot's database.")
@click.option(
    "--collection",
    metavar="COLL",
    help="The old bot's collection (aiogram, seed); aiogram2 reads its two fixed ones.",
)
@click.option("--bot", "bot_name", required=True, metavar="NAME", help="The registry's bot.")
@click.option("--prefix", default="fsm", show_default=True, help="aiogram: key prefix.")
@click.option("--separator", default=":", show_default=True, help="aiogram: key separator.")
@click.option("--with-bot-id", is_flag=True, help="aiogram: keys hold the bot id.")
@click.option("--with-destiny", is_flag=True, help="aiogram: keys end with the destiny.")
@click.option(
    "--with-business-connection-id",
    is_flag=True,
    help="aiogram: keys hold business connection ids.",
)
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=500, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace records botyard has newer versions of.")
@click.option("--dry-run", is_flag=True, help="Read and count everything; write nothing.")
def import_state(
    registry_path: Path,
    source_format: str,
    uri: str,
    database: str,
    collection: str | None,
    bot_name: str,
    batch_size: int,
    overwrite: bool,
    dry_run: bool,
    **key_options: Any,
) -> None:
    """Copy the FSM state of an existing aiogram bot into REGISTRY's bot NAME.

    The source is only read. Records get the bot's state_ttl from now. A record
    botyard already has is kept when it is newer (botyard wrote it, or its user
    talked to botyard since the last import) unless --overwrite; running the same
    import again writes nothing. Unparseable source documents are listed by id.
    """
    context = click.get_current_context()
    _check_import_options(context, source_format, uri, collection, key_options)
    registry = load_quietly(registry_path)
    try:
        bot = registry.bot(bot_name)
    except KeyError as error:
        raise click.UsageError(str(error.args[0])) from None
    bot_id = int(bot.token_value.partition(":")[0]) if bot.token else None
    if key_options["with_bot_id"] and bot_id is None:
        why = registry.token_problems.get(bot.name, "set the token variable")
        raise click.UsageError(
            f"--with-bot-id: bot {bot.name}'s token is not set, and its id (the part "
            f"before ':') tells its keys from other bots' keys ({why})"
        )
    label = source_label(uri, database, collection or "")

    async def copy(target: AsyncDatabase[Document]) -> ImportReport:
        client = mongo_client(uri, timeout=registry.storage.timeout, appname="botyard-import")
        try:
            source = _source(source_format, client[database], collection or "", label, key_options)
            click.echo(f"source: {source.describe()}")
            click.echo(
                f"target: bot {bot.name} (namespace {bot.namespace}, "
                f"state_ttl {format_duration(bot.state_ttl)})"
            )
            total = await source.count()
            # A dry run writes nothing, not even the indexes.
            await prepare_database(target, create_indexes=not dry_run)
            writer = RecordWriter(
                target,
                bot.namespace,
                state_ttl=bot.state_ttl,
                ttl_grace=backstop_grace(registry.cleanup),
                bot_id=bot_id,
                overwrite=overwrite,
                dry_run=dry_run,
            )
            console = Console(stderr=True)
            with progress_bar(
                "importing", total, console=console, disable=not console.is_terminal
            ) as advance:
                return await import_records(source, writer, batch_size=batch_size, on_batch=advance)
        finally:
            await client.close()

    _print_report(run_on_database(registry, copy, appname="botyard-import"), dry_run)


def _check_import_options(
    context: click.Context,
    source_format: str,
    uri: str,
    collection: str | None,
    key_options: dict[str, Any],
) -> None:
    if not uri.startswith(("mongodb://", "mongodb+srv://")):
        raise click.BadParameter(
            f"expected a MongoDB URI starting with mongodb:// or mongodb+srv://, "
            f"got {mask_uri(uri)!r}",
            param_hint="--uri",
        )
    if source_format == "aiogram2":
        if collection is not None:
            raise click.BadParameter(
                "aiogram2 reads the collections aiogram_state and aiogram_data; drop --collection",
                param_hint="--collection",
            )
    elif not collection:
        raise click.BadParameter(f"--from {source_format} needs it", param_hint="--collection")
    given = [
        name
        for name in _KEY_OPTIONS
        if context.get_parameter_source(name) is ParameterSource.COMMANDLINE
    ]
    if source_format != "aiogram" and given:
        names = ", ".join("--" + name.replace("_", "-") for name in given)
        raise click.UsageError(f"{names}: only for --from aiogram (aiogram 3 key strings)")
    if not key_options["separator"]:
        raise click.BadParameter("must not be empty", param_hint="--separator")


def _source(
    source_format: str,
    database: AsyncDatabase[Document],
    collection: str,
    label: str,
    key_options: dict[str, Any],
) -> Source:
    if source_format == "aiogram":
        return Aiogram3Source(database[collection], label, KeyLayout(**key_options))
    if source_format == "seed":
        return SeedSource(database[collection], label)
    return Aiogram2Source(database, label)


def _print_report(report: ImportReport, dry_run: bool) -> None:
    skipped = sum(report.skipped.values())
    verb = "would import" if dry_run else "imported"
    click.echo(f"read {report.read} source document(s)")
    click.echo(
        f"{verb} {report.imported}, skipped {skipped}, unparseable {len(report.unparseable)}"
    )
    if skipped:
        reasons = ", ".join(f"{reason} {count}" for reason, count in report.skipped.items())
        click.echo(f"skipped: {reasons}")
    if report.duplicates:
        click.echo("duplicate keys (the first document of each key was used):")
        for line in report.duplicates:
            click.echo(f"  {line}")
    if report.unparseable:
        click.echo("unparseable (not imported; the source is unchanged):")
        for entry in report.unparseable:
            click.echo(f"  {entry.source_id}: {entry.reason}")
    if dry_run:
        click.echo("dry run: nothing was written")
