"""The registry as typed, frozen, validated data.

Everything the YAML file can say is declared here once, as pydantic models that
forbid unknown keys (a typo such as ``stat_ttl`` is an error, not a silently
ignored setting). The models are validated once at the edge, by
:func:`botyard.registry.loader.load_registry`; the rest of botyard only reads them.

Each bot's settings that can be inherited (``state_ttl``, ``fsm_strategy``,
``max_concurrent_updates``, ``flood_limits`` key by key, ``api_retry_for``,
``handling_timeout``, ``update_retries``) are
resolved from ``defaults`` while the registry is validated, so a
:class:`BotConfig` always carries its effective values and a change to
``defaults`` shows up as a change to the bots it affects.

The ``Field(description=...)`` texts are the reference documentation of the
file: they end up in ``botyard schema`` and in the README.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import timedelta
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple
from urllib.parse import urlsplit

from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    SecretStr,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.config import JsonDict
from pydantic_core import PydanticCustomError

from botyard.errors import BotyardError
from botyard.registry.durations import ACCEPTED_FORMS, format_duration, parse_duration
from botyard.tokens import check_token, mask_token, mask_uri

if TYPE_CHECKING:
    from aiogram.fsm.strategy import FSMStrategy

__all__ = [
    "DEFAULT_STORAGE_TIMEOUT",
    "PER_BOT_METRICS_UP_TO",
    "BotConfig",
    "BotNotFound",
    "CleanupConfig",
    "ClusterConfig",
    "Defaults",
    "FSMStrategyName",
    "FloodLimitsConfig",
    "MetricsConfig",
    "OpsConfig",
    "Registry",
    "RegistryDocument",
    "RegistryError",
    "StorageConfig",
    "WebhookConfig",
    "cross_field_problems",
    "format_loc",
    "missing_token_message",
    "split_listen",
]

#: ``storage.timeout`` when the file does not set it.
DEFAULT_STORAGE_TIMEOUT = timedelta(seconds=10)

Loc = tuple[str | int, ...]
"""A key path into the file, as pydantic reports it: ``("bots", 1, "state_ttl")``."""


class RegistryError(BotyardError, ValueError):
    """Everything wrong with a registry file, one problem per line.

    Raised for bad input only, never with a traceback worth reading: the
    message is meant to be printed as is. ``problems`` keeps the lines apart
    for callers that render them (``botyard check``).
    """

    def __init__(self, problems: Sequence[str], *, source: str | None = None) -> None:
        self.problems = tuple(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            header = f"{source}: " if source else ""
            message = "\n".join([f"{header}{len(self.problems)} problems", *self.problems])
        super().__init__(message)


class BotNotFound(BotyardError, KeyError):
    """No bot of that name in the registry; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError's own quotes the message
        return str(self.args[0])


def format_loc(loc: Loc) -> str:
    """``("bots", 1, "state_ttl")`` -> ``"bots[1].state_ttl"``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else part
    return text


# --- scalar types -----------------------------------------------------------------

_NAME = re.compile(r"[a-z0-9_-]{1,64}")
_IMPORT_SPEC = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
_DATABASE_FORBIDDEN = set('/\\. "$*<>:|?')
_NUMBER_ONLY = re.compile(r"\d+(?:\.\d*)?")


def _check_name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(
            f"invalid name {value!r}: use 1 to 64 characters from a-z, 0-9, '_' and '-'"
        )
    return value


def _check_import_spec(value: str) -> str:
    if not _IMPORT_SPEC.fullmatch(value.strip()):
        raise ValueError(
            f"invalid import path {value!r}: write 'package.module:attribute', "
            "e.g. bots.questionnaire:router"
        )
    return value.strip()


class FSMStrategyName(Enum):
    """aiogram's ``FSMStrategy``, member for member, declared here so that reading a
    registry does not import aiogram; :meth:`to_aiogram` converts where the runtime needs it."""

    USER_IN_CHAT = "user_in_chat"
    CHAT = "chat"
    GLOBAL_USER = "global_user"
    USER_IN_TOPIC = "user_in_topic"
    CHAT_TOPIC = "chat_topic"

    def to_aiogram(self) -> FSMStrategy:
        from aiogram.fsm.strategy import FSMStrategy

        return FSMStrategy[self.name]


def _parse_strategy(value: object) -> FSMStrategyName:
    if isinstance(value, FSMStrategyName):
        return value
    try:
        return FSMStrategyName[str(value).strip().upper()]
    except KeyError:
        raise ValueError(
            f"unknown fsm_strategy {value!r} (use {', '.join(_STRATEGY_NAMES)})"
        ) from None


def _parse_per_bot(value: object) -> Literal["auto"] | bool:
    if value == "auto":
        return "auto"
    if isinstance(value, bool):
        return value
    raise ValueError(f"should be auto, true or false, not {value!r}")


def _check_schedule(value: str) -> str:
    text = value.strip()
    if " " not in text:
        try:
            parse_duration(text, allow_never=False)
        except ValueError as error:
            raise ValueError(
                f"invalid schedule {value!r}: {error}; or write a 5-field cron expression "
                "such as '*/10 * * * *'"
            ) from None
        return text
    try:
        CronTrigger.from_crontab(text, timezone="UTC")
    except ValueError as error:
        raise ValueError(
            f"invalid cron expression {value!r}: {error} (use 5 fields: minute hour "
            "day-of-month month day-of-week, e.g. '*/10 * * * *', or an interval like 10m)"
        ) from None
    return " ".join(text.split())


def split_listen(value: str) -> tuple[str, int]:
    """``"0.0.0.0:8080"`` -> ``("0.0.0.0", 8080)``; ``"[::1]:9090"`` -> ``("::1", 9090)``."""
    host, colon, port = value.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(
            f"invalid listen address {value!r}: write host:port, e.g. 0.0.0.0:8080 "
            "or [::]:8080 (port 0 picks a free port)"
        )
    return host, int(port)


def _check_listen(value: str) -> str:
    split_listen(value)
    return value.strip()


def _parse_seconds(value: object) -> object:
    """A number of seconds (fractions allowed, for tests) or a duration such as ``15s``."""
    if isinstance(value, str) and not _NUMBER_ONLY.fullmatch(value.strip()):
        duration = parse_duration(value, allow_never=False)
        assert duration is not None
        return duration.total_seconds()
    return value


def _check_http_url(value: str) -> str:
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"invalid URL {value!r}: expected http://host[:port] or https://...")
    return value.strip().rstrip("/")


def _check_database(value: str) -> str:
    bad = sorted(_DATABASE_FORBIDDEN.intersection(value))
    if not value or len(value) > 63 or bad:
        raise ValueError(
            f"invalid MongoDB database name {value!r}: 1 to 63 characters, none of "
            f"{' '.join(sorted(_DATABASE_FORBIDDEN))}"
        )
    return value


_RATE = re.compile(r"(\d+(?:\.\d+)?)\s*/\s*([smh])")
_RATE_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}


def _check_rate(value: object) -> str:
    text = str(value).strip().lower() if isinstance(value, str | int | float) else ""
    match = _RATE.fullmatch(text)
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(
            f"invalid rate {value!r}: write messages per unit, e.g. 30/s, 20/m or 100/h"
        )
    return f"{match.group(1)}/{match.group(2)}"


def rate_per_second(rate: str) -> float:
    """``"20/m"`` -> ``0.333...``: a validated rate in messages per second."""
    count, unit = rate.split("/")
    return float(count) / _RATE_UNIT_SECONDS[unit]


def _empty_is_none(value: object) -> object:
    """Let ``api_server: ${BOT_API_SERVER:-}`` mean "not set" when the variable is empty."""
    return None if isinstance(value, str) and not value.strip() else value


def _one_or_many(value: object) -> object:
    """Let ``routers: bots.shop:router`` stand for a one-item list."""
    return [value] if isinstance(value, str) else value


_STRATEGY_NAMES = [strategy.value for strategy in FSMStrategyName]

Name = Annotated[
    str,
    AfterValidator(_check_name),
    WithJsonSchema({"type": "string", "pattern": f"^{_NAME.pattern}$"}),
]
ImportSpec = Annotated[
    str,
    AfterValidator(_check_import_spec),
    WithJsonSchema({"type": "string", "pattern": f"^{_IMPORT_SPEC.pattern}$"}),
]
Duration = Annotated[
    timedelta | None,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "examples": ["30s", "15m", "12h", "7d", "1h30m", "never"]}),
]
"""A positive ``timedelta``, or ``None`` for ``never``."""
Timeout = Annotated[
    timedelta,
    BeforeValidator(lambda value: parse_duration(value, allow_never=False)),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "examples": ["5s", "10s", "1m"]}),
]
"""A positive ``timedelta``; ``never`` is refused."""
Strategy = Annotated[
    FSMStrategyName,
    BeforeValidator(_parse_strategy),
    PlainSerializer(lambda strategy: strategy.value, return_type=str),
    WithJsonSchema({"type": "string", "enum": _STRATEGY_NAMES}),
]
PerBot = Annotated[
    Literal["auto"] | bool,
    PlainValidator(_parse_per_bot),
    WithJsonSchema({"enum": ["auto", True, False]}),
]
Schedule = Annotated[
    str,
    AfterValidator(_check_schedule),
    WithJsonSchema({"type": "string", "examples": ["*/10 * * * *", "0 3 * * *", "10m", "1h"]}),
]
Listen = Annotated[
    str,
    AfterValidator(_check_listen),
    WithJsonSchema({"type": "string", "examples": ["0.0.0.0:8080", "127.0.0.1:9090"]}),
]
HttpUrl = Annotated[
    str,
    AfterValidator(_check_http_url),
    WithJsonSchema({"type": "string", "format": "uri", "pattern": "^https?://"}),
]
DatabaseName = Annotated[str, AfterValidator(_check_database)]
Rate = Annotated[
    str,
    BeforeValidator(_check_rate),
    WithJsonSchema({"type": "string", "pattern": r"^\d+(\.\d+)?\s*/\s*[smh]$"}),
]
"""Messages per unit of time: ``30/s``, ``20/m``, ``100/h``."""
Seconds = Annotated[
    float,
    BeforeValidator(_parse_seconds),
    WithJsonSchema({"type": ["string", "number"], "examples": ["3s", "15s", 0.5]}),
]


def _undocumented_default(schema: JsonDict) -> None:
    """Drop a placeholder default from the JSON schema: the real one comes from elsewhere."""
    schema.pop("default", None)


# --- sections ----------------------------------------------------------------------


class _Section(BaseModel):
    """Common settings: unknown keys are errors, values never change after loading.

    ``hide_input_in_errors`` keeps a rejected value (possibly a token) out of the
    text of a pydantic ``ValidationError``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class StorageConfig(_Section):
    """Where FSM state lives."""

    uri: str | None = Field(
        default=None,
        repr=False,
        description=(
            "MongoDB connection string (mongodb:// or mongodb+srv://), usually "
            "${MONGODB_URI}. Leave it empty or unset to have botyard start an embedded "
            "development database."
        ),
    )
    database: DatabaseName = Field(
        default="botyard",
        description="Database that holds the state of every bot, one namespace per bot.",
    )
    timeout: Timeout = Field(
        default=DEFAULT_STORAGE_TIMEOUT,
        json_schema_extra={"default": format_duration(DEFAULT_STORAGE_TIMEOUT)},
        description=(
            "Longest any one database operation may take before it fails (MongoDB's "
            "timeoutMS), e.g. 10s. A failed write of an update is retried; raise it for "
            "migrations that rewrite a large collection in a single operation."
        ),
    )

    @field_validator("uri", mode="before")
    @classmethod
    def _check_uri(cls, value: object) -> object:
        value = _empty_is_none(value)
        if isinstance(value, str) and not value.strip().startswith(
            ("mongodb://", "mongodb+srv://")
        ):
            raise ValueError(
                f"expected a MongoDB URI starting with mongodb:// or mongodb+srv://, "
                f"got {mask_uri(value.strip())!r}"
            )
        return value.strip() if isinstance(value, str) else value


class FloodLimitsConfig(_Section):
    """How fast one bot sends, kept under Telegram's flood limits by waiting, never failing."""

    per_bot: Rate = Field(
        default="30/s",
        description="Most messages the bot sends in all, e.g. 30/s (Telegram's limit).",
    )
    per_chat: Rate = Field(
        default="1/s",
        description="Most messages the bot sends to one chat, e.g. 1/s (Telegram's limit).",
    )
    per_group: Rate = Field(
        default="20/m",
        description=(
            "Most messages the bot sends to one group or channel (a chat with a negative "
            "id), e.g. 20/m (Telegram's limit); per_chat applies too."
        ),
    )
    burst: int = Field(
        default=3,
        ge=1,
        description=(
            "Messages that may go at once to a chat (and in all) before the rates apply; "
            "the rates hold on average."
        ),
    )


class BotProperties(_Section):
    """aiogram's ``DefaultBotProperties``: what every message the bot sends gets unless the
    call says otherwise."""

    parse_mode: Literal["HTML", "Markdown", "MarkdownV2"] | None = Field(
        default=None, description="Formatting of message texts and captions."
    )
    disable_notification: bool | None = Field(
        default=None, description="Send messages silently (no sound on the user's device)."
    )
    protect_content: bool | None = Field(
        default=None, description="Forbid forwarding and saving the bot's messages."
    )
    allow_sending_without_reply: bool | None = Field(
        default=None, description="Send a reply even when the message it replies to is gone."
    )
    link_preview_is_disabled: bool | None = Field(
        default=None, description="No link previews in the bot's messages."
    )
    link_preview_prefer_small_media: bool | None = Field(
        default=None, description="Link previews with a small image."
    )
    link_preview_prefer_large_media: bool | None = Field(
        default=None, description="Link previews with a large image."
    )
    link_preview_show_above_text: bool | None = Field(
        default=None, description="Link previews above the message text."
    )
    show_caption_above_media: bool | None = Field(
        default=None, description="Captions above photos and videos."
    )

    def given(self) -> dict[str, Any]:
        """The properties the registry sets, for ``DefaultBotProperties(**given)``."""
        return self.model_dump(exclude_none=True)


class MiddlewareConfig(_Section):
    """One aiogram middleware of a bot: ``module:attribute``, the event it wraps and how."""

    middleware: ImportSpec = Field(
        description=(
            "'module:attribute' of a middleware: a BaseMiddleware instance (shared by the "
            "bots naming it), an async function (handler, event, data), or a class or "
            "function called with no arguments for each bot's Dispatcher."
        ),
    )
    event: str = Field(
        default="update",
        pattern=r"^[a-z_]+$",
        description=(
            "The event observer it is registered on: update (every update), or one event "
            "type such as message, callback_query, inline_query."
        ),
    )
    scope: Literal["outer", "inner"] = Field(
        default="outer",
        description=(
            "outer: runs for every event, before filters; inner: only for events a "
            "handler matched, around the handler."
        ),
    )


def _middleware_shorthand(value: object) -> object:
    """``- module:attr`` is ``- {middleware: module:attr}``."""
    items = _one_or_many(value)
    if isinstance(items, list | tuple):
        return [{"middleware": item} if isinstance(item, str) else item for item in items]
    return items


Middlewares = Annotated[tuple[MiddlewareConfig, ...], BeforeValidator(_middleware_shorthand)]


class Defaults(_Section):
    """Values every bot inherits unless it sets its own."""

    # The defaults' JSON-schema spellings are given by hand: pydantic would show
    # the timedelta as "P7D" and the enum by its integer value.
    state_ttl: Duration = Field(
        default=timedelta(days=7),
        json_schema_extra={"default": "7d"},
        description=(
            "How long a conversation's FSM state survives without activity before it "
            f"expires: a number and a unit ({ACCEPTED_FORMS}; units combine, as in 1h30m). "
            "never disables expiry."
        ),
    )
    fsm_strategy: Strategy = Field(
        default=FSMStrategyName.USER_IN_CHAT,
        json_schema_extra={"default": "user_in_chat"},
        description=(
            "Whose state a message reads and writes, as aiogram's FSMStrategy in lower "
            "case: user_in_chat (each user in each chat), chat (one state per chat), "
            "global_user (one state per user across chats), user_in_topic, chat_topic."
        ),
    )
    max_concurrent_updates: int = Field(
        default=64,
        ge=1,
        description=(
            "Most updates one bot handles at the same time; further updates wait. "
            "Bounds the load a single busy bot puts on the process and the database."
        ),
    )
    bot_properties: BotProperties = Field(
        default_factory=BotProperties,
        description=(
            "aiogram DefaultBotProperties every bot gets (parse_mode, protect_content, "
            "link_preview_is_disabled, ...); a bot's own bot_properties override them key "
            "by key."
        ),
    )
    middlewares: Middlewares = Field(
        default=(),
        description=(
            "aiogram middlewares every bot gets, before its own: 'module:attribute', or "
            "{middleware: 'module:attribute', event: message, scope: inner}."
        ),
    )
    flood_limits: FloodLimitsConfig = Field(
        default_factory=FloodLimitsConfig,
        description=(
            "Outbound flood control: each send waits for a slot under these rates. A bot "
            "may set some keys; the others come from here."
        ),
    )
    api_retry_for: Timeout = Field(
        default=timedelta(seconds=30),
        json_schema_extra={"default": "30s"},
        description=(
            "How long after its first attempt a Bot API call may still be retried after a "
            "transient failure (429, 5xx, a lost connection, a timeout); then its error "
            "reaches the handler. An attempt under way is bounded by the request timeout."
        ),
    )
    handling_timeout: Duration = Field(
        default=timedelta(minutes=2),
        json_schema_extra={"default": "2m"},
        description=(
            "Longest one attempt at handling an update may take (a duration such as 30s "
            "or 2m, or never). Past it the handler is cancelled, its FSM writes are "
            "discarded, and the update is given up: logged with its id, counted in "
            "botyard_updates_given_up_total, and confirmed. Only that conversation waits "
            "meanwhile."
        ),
    )
    update_retries: int = Field(
        default=8,
        ge=0,
        description=(
            "How often an update is handled again after MongoDB or the Bot API was "
            "unreachable (with backoff from 0.5 s doubling up to 30 s; a 429 waits its "
            "retry_after), and how often its FSM writes are stored again when only "
            "storing them failed. Then the update is given up: logged, counted and "
            "confirmed."
        ),
    )


class CleanupConfig(_Section):
    """The periodic job that deletes expired FSM state."""

    schedule: Schedule = Field(
        default="*/10 * * * *",
        description=(
            "When the cleanup job runs: a 5-field cron expression (minute hour "
            'day-of-month month day-of-week, quoted in YAML, e.g. "*/10 * * * *") or an '
            "interval such as 10m."
        ),
    )
    batch_size: int = Field(
        default=1000,
        ge=1,
        description="Most expired records deleted per database round trip.",
    )

    @property
    def interval(self) -> timedelta | None:
        """The interval if ``schedule`` is one, ``None`` if it is a cron expression."""
        if " " in self.schedule:
            return None
        return parse_duration(self.schedule, allow_never=False)

    def trigger(self, timezone: str = "UTC") -> CronTrigger | IntervalTrigger:
        """The APScheduler trigger for ``schedule``; cron fields are read in ``timezone``."""
        interval = self.interval
        if interval is not None:
            return IntervalTrigger(seconds=int(interval.total_seconds()), timezone=timezone)
        return CronTrigger.from_crontab(self.schedule, timezone=timezone)


class WebhookConfig(_Section):
    """How bots in webhook mode receive updates."""

    base_url: HttpUrl = Field(
        description=(
            "Public URL under which Telegram reaches this process; each webhook bot gets "
            "a path below it. Telegram requires HTTPS on port 443, 80, 88 or 8443, "
            "unless the bot uses a local Bot API server."
        ),
    )
    listen: Listen = Field(
        default="0.0.0.0:8080",
        description=(
            "host:port the HTTP server binds to (behind your TLS proxy). It also serves "
            "the health and metrics endpoints."
        ),
    )
    max_connections: int = Field(
        default=40,
        ge=1,
        le=100,
        description=(
            "Most simultaneous HTTPS connections Telegram opens to deliver one bot's "
            "updates (1 to 100)."
        ),
    )
    header_timeout: Timeout = Field(
        default=timedelta(seconds=10),
        json_schema_extra={"default": "10s"},
        description=(
            "Longest a connection may take to send a request's headers, from when it "
            "opened or since the previous response; a slower one is closed."
        ),
    )
    body_timeout: Timeout = Field(
        default=timedelta(seconds=10),
        json_schema_extra={"default": "10s"},
        description="Longest reading one request's body may take; a slower one gets 408.",
    )
    max_connections_per_client: int = Field(
        default=200,
        ge=1,
        description=(
            "Most connections one client address may hold open at once; more are closed. "
            "Behind a reverse proxy every connection comes from the proxy's address."
        ),
    )

    @property
    def address(self) -> tuple[str, int]:
        """``listen`` as ``(host, port)``."""
        return split_listen(self.listen)


class OpsConfig(_Section):
    """The operations HTTP server, for processes without a webhook server."""

    listen: Listen = Field(
        description=(
            "host:port of the health and metrics server. Only used when no bot is in "
            "webhook mode; otherwise those endpoints live on webhook.listen."
        ),
    )

    @property
    def address(self) -> tuple[str, int]:
        """``listen`` as ``(host, port)``."""
        return split_listen(self.listen)


class ClusterConfig(_Section):
    """Several ``botyard run`` replicas sharing the bots through MongoDB."""

    heartbeat_interval: Seconds = Field(
        default=3.0,
        gt=0,
        json_schema_extra={"default": "3s"},
        description=(
            "How often each replica writes its heartbeat (one small write, whatever the "
            "number of bots) and rebalances: 3s, or a number of seconds."
        ),
    )
    failover_time: Seconds = Field(
        default=15.0,
        gt=0,
        json_schema_extra={"default": "15s"},
        description=(
            "How soon the bots of a replica that died or lost MongoDB are served by "
            "another. Others take its bots over after failover_time - heartbeat_interval "
            "of silence (on MongoDB's clock); the replica itself stops polling after "
            "failover_time - 2 x heartbeat_interval without a heartbeat. At least three "
            "heartbeat intervals."
        ),
    )

    @model_validator(mode="after")
    def _three_heartbeats(self) -> ClusterConfig:
        if self.failover_time < 3 * self.heartbeat_interval:
            raise ValueError(
                f"failover_time ({self.failover_time:g}s) must be at least three "
                f"heartbeat_interval ({self.heartbeat_interval:g}s): a replica needs time "
                "to stop its bots before the others take them over"
            )
        return self

    @property
    def lapse(self) -> float:
        """Seconds of silence after which the other replicas take a replica's bots."""
        return self.failover_time - self.heartbeat_interval

    @property
    def fence(self) -> float:
        """Seconds without a heartbeat after which a replica stops polling on its own."""
        return self.failover_time - 2 * self.heartbeat_interval


#: ``metrics.per_bot: auto`` labels series by bot up to this many enabled bots.
PER_BOT_METRICS_UP_TO = 500


class MetricsConfig(_Section):
    """What ``/metrics`` exports."""

    per_bot: PerBot = Field(
        default="auto",
        description=(
            "Label series by bot (true), export only platform-wide sums (false), or auto: "
            f"by bot up to {PER_BOT_METRICS_UP_TO} enabled bots, platform-wide beyond. "
            "Per bot costs 19 series per idle bot and 15 more per bot that handled an update."
        ),
    )

    def labels_bots(self, enabled_bots: int) -> bool:
        """Whether series carry a ``bot`` label with ``enabled_bots`` bots running."""
        if self.per_bot == "auto":
            return enabled_bots <= PER_BOT_METRICS_UP_TO
        return self.per_bot


class BotConfig(_Section):
    """One bot, with its effective settings (defaults already applied)."""

    name: Name = Field(
        description=(
            "Unique name of the bot, 1 to 64 characters from a-z, 0-9, '_' and '-'. "
            "Used in logs, metrics and commands, and as the storage namespace unless "
            "namespace is given."
        ),
    )
    token: Annotated[SecretStr | None, WithJsonSchema({"type": "string", "writeOnly": True})] = (
        Field(
            default=None,
            validate_default=True,
            json_schema_extra=_undocumented_default,
            description=(
                "Bot API token from @BotFather, normally ${SOME_TOKEN} so it stays out of the "
                "file. Never printed: logs and errors show only the bot id before the ':'."
            ),
        )
    )
    routers: Annotated[tuple[ImportSpec, ...], BeforeValidator(_one_or_many)] = Field(
        min_length=1,
        description=(
            "aiogram routers of the bot, as 'module:attribute' import paths, imported with "
            "the registry file's folder on sys.path. The attribute is a Router, or a "
            "function returning a new Router (required when several bots share a module)."
        ),
    )
    api_server: Annotated[HttpUrl | None, BeforeValidator(_empty_is_none)] = Field(
        default=None,
        description=(
            "Base URL of a local Telegram Bot API server, e.g. http://127.0.0.1:8081. "
            "Unset: the public api.telegram.org."
        ),
    )
    namespace: Name = Field(
        default="",
        json_schema_extra=_undocumented_default,
        description=(
            "Storage namespace that keeps this bot's state apart from the others. "
            "Defaults to the bot's name; set it to keep a bot's state across a rename."
        ),
    )
    state_ttl: Duration = Field(
        default=timedelta(days=7),
        json_schema_extra=_undocumented_default,
        description="This bot's state_ttl; defaults to defaults.state_ttl.",
    )
    fsm_strategy: Strategy = Field(
        default=FSMStrategyName.USER_IN_CHAT,
        json_schema_extra=_undocumented_default,
        description="This bot's fsm_strategy; defaults to defaults.fsm_strategy.",
    )
    max_concurrent_updates: int = Field(
        default=64,
        ge=1,
        json_schema_extra=_undocumented_default,
        description=(
            "This bot's max_concurrent_updates; defaults to defaults.max_concurrent_updates."
        ),
    )
    flood_limits: FloodLimitsConfig = Field(
        default_factory=FloodLimitsConfig,
        json_schema_extra=_undocumented_default,
        description=(
            "This bot's flood limits; keys it leaves out come from defaults.flood_limits."
        ),
    )
    api_retry_for: Timeout = Field(
        default=timedelta(seconds=30),
        json_schema_extra=_undocumented_default,
        description="This bot's api_retry_for; defaults to defaults.api_retry_for.",
    )
    bot_properties: BotProperties = Field(
        default_factory=BotProperties,
        json_schema_extra=_undocumented_default,
        description=(
            "This bot's aiogram DefaultBotProperties, over defaults.bot_properties key by key."
        ),
    )
    middlewares: Middlewares = Field(
        default=(),
        description=(
            "This bot's aiogram middlewares, registered after defaults.middlewares: "
            "'module:attribute', or {middleware: 'module:attribute', event: message, "
            "scope: inner}."
        ),
    )
    handling_timeout: Duration = Field(
        default=timedelta(minutes=2),
        json_schema_extra=_undocumented_default,
        description="This bot's handling_timeout; defaults to defaults.handling_timeout.",
    )
    update_retries: int = Field(
        default=8,
        ge=0,
        json_schema_extra=_undocumented_default,
        description="This bot's update_retries; defaults to defaults.update_retries.",
    )
    enabled: bool = Field(
        default=True,
        description="false keeps the bot in the file without running it.",
    )
    mode: Literal["polling", "webhook"] = Field(
        default="polling",
        description=(
            "How the bot receives updates: polling (long polling, works anywhere) or "
            "webhook (needs the webhook section)."
        ),
    )
    on_state_expired: Annotated[ImportSpec | None, BeforeValidator(_empty_is_none)] = Field(
        default=None,
        description=(
            "Optional 'module:function' of an async function called when one of this "
            "bot's conversations expires, e.g. to tell the user their session ended."
        ),
    )
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Free-form mapping handed to the bot's handlers, for per-bot values such as "
            "texts, admin ids or feature switches. ${VAR} works inside it too."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _namespace_defaults_to_name(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("namespace"):
            return data
        name = data.get("name")
        if isinstance(name, str) and _NAME.fullmatch(name):
            return {**data, "namespace": name}
        return data

    @field_validator("token", mode="before")
    @classmethod
    def _check_token(cls, value: object, info: ValidationInfo) -> object:
        if value is None or (isinstance(value, str) and not value.strip()):
            if (info.context or {}).get("require_tokens", True):
                raise ValueError(missing_token_message(info.data.get("name")))
            return None
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str):
            return SecretStr(check_token(value))
        raise ValueError(f"expected a token string, got a {type(value).__name__}")

    @field_validator("routers", "api_server", "flood_limits", "bot_properties", mode="after")
    @classmethod
    def _share_equal_values(cls, value: object, info: ValidationInfo) -> object:
        """One object for a value many bots have alike, within one load (its context's
        ``shared``): most bots of a large registry inherit the same sections, and each
        frozen section with its pydantic bookkeeping costs about 1 KB per bot."""
        shared = (info.context or {}).get(SHARED_VALUES)
        if shared is None:
            return value
        try:
            return shared.setdefault((info.field_name, value), value)
        except TypeError:  # unhashable: kept as it is
            return value

    @property
    def token_value(self) -> str:
        """The token itself, for the Bot API client; ``ValueError`` if the bot has none."""
        if self.token is None:
            raise ValueError(f"bot {self.name!r} has no token")
        return self.token.get_secret_value()

    @property
    def masked_token(self) -> str:
        """The token as logs may show it: ``"123456789:***"``."""
        return mask_token(self.token.get_secret_value()) if self.token else "(no token)"


def missing_token_message(name: object) -> str:
    """What to write for a bot without a token, with a variable named after the bot."""
    variable = f"{name.upper().replace('-', '_')}_TOKEN" if isinstance(name, str) else "BOT_TOKEN"
    return f"no token: write token: ${{{variable}}} and set {variable}"


#: Key of the validation context's dict of values bots share (see ``BotConfig``).
SHARED_VALUES = "shared_values"


# --- the whole file ----------------------------------------------------------------

_INHERITED = (
    "state_ttl",
    "fsm_strategy",
    "max_concurrent_updates",
    "flood_limits",
    "api_retry_for",
    "bot_properties",
    "middlewares",
    "handling_timeout",
    "update_retries",
)


class RegistryDocument(_Section):
    """The registry file: which bots run, and the settings they share."""

    storage: StorageConfig = Field(
        default_factory=StorageConfig,
        description="Where FSM state is stored.",
    )
    defaults: Defaults = Field(
        default_factory=Defaults,
        description="Settings every bot inherits unless it sets its own.",
    )
    cleanup: CleanupConfig = Field(
        default_factory=CleanupConfig,
        description="When and how expired FSM state is deleted.",
    )
    webhook: WebhookConfig | None = Field(
        default=None,
        description="HTTP server receiving updates for bots in webhook mode. Optional.",
    )
    ops: OpsConfig | None = Field(
        default=None,
        description=("Health and metrics server for deployments without webhooks. Optional."),
    )
    cluster: ClusterConfig | None = Field(
        default=None,
        description=(
            "Run several replicas of botyard run on this registry and one MongoDB: each "
            "enabled bot is served by exactly one live replica. Write cluster: {} for the "
            "defaults (an empty cluster: does the same). Optional; without it a process serves "
            "every bot."
        ),
    )
    metrics: MetricsConfig = Field(
        default_factory=MetricsConfig,
        description="What /metrics exports: series by bot or platform-wide sums.",
    )
    bots: tuple[BotConfig, ...] = Field(
        min_length=1,
        description="The bots this process runs; at least one.",
    )

    @model_validator(mode="before")
    @classmethod
    def _inherit_defaults(cls, data: Any) -> Any:
        """Copy ``defaults`` into every bot that does not set its own value.

        Skipped when ``defaults`` itself is invalid: its own errors are reported
        and repeating them once per bot would bury them.
        """
        if not isinstance(data, dict):
            return data
        data = {
            key: {}
            if value is None and key in ("storage", "defaults", "cleanup", "cluster", "metrics")
            else value
            for key, value in data.items()
        }
        bots = data.get("bots")
        if not isinstance(bots, list | tuple):
            return data
        try:
            defaults = Defaults.model_validate(data.get("defaults", {}))
        except ValidationError:
            return data
        inherited = defaults.model_dump(mode="json", include=set(_INHERITED))
        data["bots"] = [_inherit(inherited, bot) if isinstance(bot, dict) else bot for bot in bots]
        return data

    @model_validator(mode="after")
    def _check_conflicts(self) -> RegistryDocument:
        problems = _conflicts(self)
        if problems:
            raise PydanticCustomError(
                "registry_conflicts",
                "{summary}",
                {
                    "summary": "; ".join(f"{format_loc(loc)}: {text}" for loc, text in problems),
                    "problems": problems,
                },
            )
        return self


def _inherit(inherited: dict[str, Any], bot: dict[str, Any]) -> dict[str, Any]:
    """The bot's settings over the defaults; a section (``flood_limits``,
    ``bot_properties``) merges key by key, and the bot's middlewares come after the
    defaults' ones (left as written when not a list: validation says why)."""
    merged = {**inherited, **bot}
    for key, value in inherited.items():
        if isinstance(value, dict) and isinstance(bot.get(key), dict):
            merged[key] = {**value, **bot[key]}
    own = _middleware_shorthand(bot.get("middlewares") or [])
    if isinstance(own, list | tuple):
        merged["middlewares"] = [*inherited["middlewares"], *own]
    return merged


class _BotKeys(NamedTuple):
    """The keys of one bot that other bots' keys must not repeat; ``None`` where invalid."""

    name: str | None
    namespace: str | None
    token: str | None
    mode: str | None
    #: The name as written, valid or not, for messages.
    label: object = None


def _conflicts(document: RegistryDocument) -> list[tuple[Loc, str]]:
    """Problems that involve more than one key: duplicates, missing sections."""
    bots = [
        _BotKeys(
            bot.name,
            bot.namespace,
            bot.token.get_secret_value() if bot.token is not None else None,
            bot.mode,
            bot.name,
        )
        for bot in document.bots
    ]
    return _conflicts_among(bots, has_webhook=document.webhook is not None)


def cross_field_problems(data: Any) -> list[tuple[Loc, str]]:
    """The checks across bots of :class:`RegistryDocument`, on the file's data before
    validation: every key involved that is valid on its own takes part, so these
    problems are found in the same pass as the errors of other keys."""
    bots = data.get("bots") if isinstance(data, dict) else None
    if not isinstance(bots, list | tuple):
        return []
    return _conflicts_among(
        [_raw_keys(bot) for bot in bots], has_webhook=data.get("webhook") is not None
    )


def _raw_keys(bot: object) -> _BotKeys:
    if not isinstance(bot, dict):
        return _BotKeys(None, None, None, None)

    def valid_name(value: object) -> str | None:
        return value if isinstance(value, str) and _NAME.fullmatch(value) else None

    name = valid_name(bot.get("name"))
    namespace = valid_name(bot.get("namespace") or name)
    token = bot.get("token")
    try:
        secret = check_token(str(token)) if isinstance(token, str | int) else None
    except ValueError:
        secret = None
    mode = bot.get("mode", "polling")
    return _BotKeys(
        name, namespace, secret, mode if mode in ("polling", "webhook") else None, bot.get("name")
    )


def _conflicts_among(bots: Sequence[_BotKeys], *, has_webhook: bool) -> list[tuple[Loc, str]]:
    problems: list[tuple[Loc, str]] = []
    names: dict[str, int] = {}
    tokens: dict[str, int] = {}
    namespaces: dict[str, int] = {}
    for index, bot in enumerate(bots):
        where: Loc = ("bots", index)
        if bot.name is not None and bot.name in names:
            first = names[bot.name]
            problems.append(((*where, "name"), f"duplicate bot name (also bots[{first}])"))
        else:
            if bot.name is not None:
                names[bot.name] = index
            if bot.namespace is not None and bot.namespace in namespaces:
                first = namespaces[bot.namespace]
                problems.append(
                    (
                        (*where, "namespace"),
                        f"storage namespace {bot.namespace!r} is also used by bot "
                        f"{bots[first].label!r} (bots[{first}]); bots sharing a "
                        "namespace overwrite each other's state",
                    )
                )
            if bot.namespace is not None:
                namespaces.setdefault(bot.namespace, index)
        if bot.token is not None:
            if bot.token in tokens:
                first = tokens[bot.token]
                problems.append(
                    (
                        (*where, "token"),
                        f"same token as bot {bots[first].label!r} (bots[{first}]); "
                        "each bot needs its own token",
                    )
                )
            tokens.setdefault(bot.token, index)
        if bot.mode == "webhook" and not has_webhook:
            problems.append(
                (
                    (*where, "mode"),
                    "mode is webhook but the file has no webhook section "
                    "(add webhook: with base_url, or use mode: polling)",
                )
            )
    return problems


class Registry(RegistryDocument):
    """A validated registry file and where it was read from."""

    path: Path = Field(description="The registry file; relative imports start from its folder.")
    token_problems: Mapping[str, str] = Field(
        default_factory=dict,
        description=(
            "Why a bot has no token, by bot name, when it was loaded with tokens optional: "
            "the variable is unset or empty, or the token is malformed. One line each, "
            "with file, line, bot and key, never the token."
        ),
    )

    @property
    def base_dir(self) -> Path:
        """The folder of the registry file: router modules are imported relative to it."""
        return self.path.parent

    @property
    def enabled_bots(self) -> tuple[BotConfig, ...]:
        """The bots to run, in file order."""
        return tuple(bot for bot in self.bots if bot.enabled)

    def bot(self, name: str) -> BotConfig:
        """The bot called ``name``; :class:`BotNotFound` naming the known bots otherwise."""
        for bot in self.bots:
            if bot.name == name:
                return bot
        raise BotNotFound(f"no bot named {name!r} in {self.path.name} (bots: {self._names()})")

    def with_tokens(self, tokens: Mapping[str, str]) -> Registry:
        """A copy with the given bots' tokens replaced, e.g. tokens generated by the sandbox.

        Tokens are checked like tokens in the file, and so are duplicates.
        """
        unknown = sorted(set(tokens) - {bot.name for bot in self.bots})
        if unknown:
            raise BotNotFound(f"no bots named {', '.join(unknown)} (bots: {self._names()})")
        bots = tuple(
            bot.model_copy(update={"token": SecretStr(check_token(tokens[bot.name]))})
            if bot.name in tokens
            else bot
            for bot in self.bots
        )
        problems = {name: text for name, text in self.token_problems.items() if name not in tokens}
        return type(self).model_validate({**dict(self), "bots": bots, "token_problems": problems})

    def _names(self) -> str:
        return ", ".join(bot.name for bot in self.bots)
