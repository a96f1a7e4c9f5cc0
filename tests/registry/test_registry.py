"""The registry file: loading, substitution, validation messages, router import, schema."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiogram import Router
from aiogram.fsm.strategy import FSMStrategy
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from pydantic import SecretStr, ValidationError

from botyard.registry.diff import diff_registries
from botyard.registry.durations import format_duration, parse_duration
from botyard.registry.loader import check_registry, load_registry
from botyard.registry.models import (
    PER_BOT_METRICS_UP_TO,
    BotConfig,
    ClusterConfig,
    Defaults,
    FSMStrategyName,
    Registry,
    RegistryError,
    rate_per_second,
)
from botyard.registry.schema import registry_json_schema
from botyard.runtime.routers import (
    RouterBuildError,
    RouterResolver,
    resolve_callable,
    resolve_routers,
)
from botyard.tokens import TokenRedactor, check_token, mask_token, mask_uri, redact

TOKEN_A = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
TOKEN_B = "987654321:BBHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
ENV = {"MONGODB_URI": "mongodb://localhost:27017", "A_TOKEN": TOKEN_A, "B_TOKEN": TOKEN_B}

EXAMPLE = """\
storage:
  uri: ${MONGODB_URI}          # ${VAR} and ${VAR:-default}
  database: botyard
defaults:
  state_ttl: 7d                # 30s / 15m / 12h / 7d; "never" disables expiry
  fsm_strategy: user_in_chat
  max_concurrent_updates: 64
cleanup:
  schedule: "*/10 * * * *"
  batch_size: 1000
webhook:
  base_url: https://bots.example.com
  listen: 0.0.0.0:8080
  max_connections: 40
ops:
  listen: 127.0.0.1:9090
bots:
  - name: questionnaire
    token: ${QUESTIONNAIRE_TOKEN}
    routers: [bots.questionnaire:router]
    api_server: http://127.0.0.1:8081
    namespace: questionnaire
    state_ttl: 1h
    enabled: true
    mode: polling
    on_state_expired: bots.questionnaire:on_expired
    settings: {}
  - name: shop
    token: ${SHOP_TOKEN}
    routers: [bots.shop:make_router]
    state_ttl: never
    fsm_strategy: chat
    mode: webhook
    settings: {greeting: "Hi $$name", admins: [1, 2]}
  - name: archive
    token: ${ARCHIVE_TOKEN:-555555:CCHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw}
    routers: [bots.shop:make_router]
    enabled: false
"""
EXAMPLE_ENV = {
    "MONGODB_URI": "mongodb://user:secret@db.example.com:27017/?retryWrites=false",
    "QUESTIONNAIRE_TOKEN": TOKEN_A,
    "SHOP_TOKEN": TOKEN_B,
}
QUESTIONNAIRE_MODULE = """\
from aiogram import Router

router = Router(name="questionnaire")

async def on_expired(*args, **kwargs):
    pass
"""
SHOP_MODULE = """\
from aiogram import Router

calls = []

def make_router():
    calls.append(1)
    return Router(name="shop")
"""


@pytest.fixture(autouse=True)
def _isolated_imports() -> Iterator[None]:
    """Each test's bot modules live in its own tmp_path: forget them afterwards.

    The repository's own ``bots`` package may already be imported by an earlier
    test; it is set aside so that ``bots.*`` resolves under the test's tmp_path.
    """
    path, modules = list(sys.path), dict(sys.modules)
    for name in modules:
        if name == "bots" or name.startswith("bots."):
            del sys.modules[name]
    yield
    sys.path[:] = path
    for name in set(sys.modules) - set(modules):
        del sys.modules[name]
    sys.modules.update(modules)


def write(folder: Path, text: str, name: str = "botyard.yaml") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def write_bots(folder: Path, **modules: str) -> None:
    write(folder, "", "bots/__init__.py")
    for name, source in modules.items():
        write(folder, source, f"bots/{name}.py")


def problems_of(path: Path, env: dict[str, str] | None = None, **options: Any) -> str:
    with pytest.raises(RegistryError) as caught:
        load_registry(path, environ=ENV if env is None else env, **options)
    message = str(caught.value)
    assert TOKEN_A not in message
    assert TOKEN_B not in message
    assert "Traceback" not in message
    return message


def one_bot(extra: str = "", *, token: str = "${A_TOKEN}", name: str = "shop") -> str:
    return f"bots:\n  - name: {name}\n    token: {token}\n    routers: [bots.shop:router]\n{extra}"


# --- the example ---------------------------------------------------------------------


def test_full_example_loads_with_effective_values(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE)
    registry = load_registry(path, environ=EXAMPLE_ENV)

    assert registry.path == path
    assert registry.base_dir == tmp_path
    assert registry.storage.uri == EXAMPLE_ENV["MONGODB_URI"]
    assert registry.storage.database == "botyard"
    assert registry.cleanup.schedule == "*/10 * * * *"
    assert registry.cleanup.interval is None
    assert isinstance(registry.cleanup.trigger(), CronTrigger)
    assert registry.webhook is not None
    assert registry.webhook.address == ("0.0.0.0", 8080)
    assert registry.webhook.max_connections == 40
    assert registry.ops is not None
    assert registry.ops.address == ("127.0.0.1", 9090)

    questionnaire = registry.bot("questionnaire")
    assert questionnaire.token is not None
    assert questionnaire.token.get_secret_value() == TOKEN_A
    assert questionnaire.routers == ("bots.questionnaire:router",)
    assert questionnaire.api_server == "http://127.0.0.1:8081"
    assert questionnaire.namespace == "questionnaire"
    assert questionnaire.state_ttl == timedelta(hours=1)
    assert questionnaire.fsm_strategy.to_aiogram() is FSMStrategy.USER_IN_CHAT
    assert questionnaire.max_concurrent_updates == 64
    assert questionnaire.mode == "polling"
    assert questionnaire.on_state_expired == "bots.questionnaire:on_expired"
    assert questionnaire.settings == {}

    shop = registry.bot("shop")
    assert shop.state_ttl is None  # never
    assert shop.fsm_strategy.to_aiogram() is FSMStrategy.CHAT
    assert shop.namespace == "shop"  # defaults to the name
    assert shop.mode == "webhook"
    assert shop.settings == {"greeting": "Hi $name", "admins": [1, 2]}

    archive = registry.bot("archive")
    assert archive.state_ttl == timedelta(days=7)  # inherited
    assert archive.masked_token == "555555:***"
    assert [bot.name for bot in registry.enabled_bots] == ["questionnaire", "shop"]

    shown = repr(registry) + str(registry)
    assert TOKEN_A not in shown
    assert TOKEN_B not in shown
    assert "secret" not in shown  # the storage URI's password


def test_bots_with_equal_sections_share_one_object_per_value(tmp_path: Path) -> None:
    """A 10,000-bot registry kept each bot's inherited sections apart (about 1.8 KB per
    bot): equal values are now one object, a bot's own value stays its own."""
    path = write(
        tmp_path,
        """
        defaults:
          flood_limits: {per_chat: 2/s}
        bots:
          - {name: a, token: "${A_TOKEN}", routers: [bots.shop:router]}
          - {name: b, token: "${B_TOKEN}", routers: [bots.shop:router]}
          - name: c
            token: "${C_TOKEN}"
            routers: [bots.other:router]
            api_server: http://127.0.0.1:8081
            flood_limits: {per_chat: 3/s}
            bot_properties: {parse_mode: HTML}
        """,
    )
    environ = {**ENV, "C_TOKEN": "555555:CCHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"}
    registry = load_registry(path, environ=environ)
    a, b, c = registry.bots
    sections = ("routers", "api_server", "flood_limits", "bot_properties")
    assert all(getattr(a, name) is getattr(b, name) for name in sections)
    assert all(getattr(a, name) is not getattr(c, name) for name in sections)
    assert [bot.flood_limits.per_chat for bot in registry.bots] == ["2/s", "2/s", "3/s"]
    assert c.routers == ("bots.other:router",)
    assert a.bot_properties.parse_mode is None
    assert c.bot_properties.parse_mode == "HTML"
    again = load_registry(path, environ=environ)
    assert again.bots[0].flood_limits == a.flood_limits  # equal, but of its own load
    assert again.bots[0].flood_limits is not a.flood_limits


def test_example_passes_check_with_every_router_and_hook_imported(tmp_path: Path) -> None:
    write_bots(tmp_path, questionnaire=QUESTIONNAIRE_MODULE, shop=SHOP_MODULE)
    path = write(tmp_path, EXAMPLE)
    assert check_registry(path, environ=EXAMPLE_ENV) == (
        f"{path}: OK: 3 bot(s), 2 enabled (questionnaire, shop); "
        "3 router(s) and 1 hook(s) imported",
        (),
    )


def test_defaults_apply_to_bots_that_do_not_override(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "defaults:\n  state_ttl: 1h30m\n  fsm_strategy: GLOBAL_USER\n"
        "  max_concurrent_updates: 5\n" + one_bot(),
    )
    bot = load_registry(path, environ=ENV).bot("shop")
    assert bot.state_ttl == timedelta(hours=1, minutes=30)
    assert bot.fsm_strategy.to_aiogram() is FSMStrategy.GLOBAL_USER
    assert bot.max_concurrent_updates == 5


def test_flood_limits_merge_key_by_key_and_retry_window_is_inherited(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "defaults:\n  flood_limits:\n    per_chat: 2/s\n    burst: 5\n  api_retry_for: 1m\n"
        + one_bot("    flood_limits: {per_group: 10/m}\n")
        + "  - name: other\n    token: ${B_TOKEN}\n    routers: [bots.shop:router]\n"
        "    api_retry_for: 10s\n    flood_limits: {per_bot: 100/h}\n",
    )
    registry = load_registry(path, environ=ENV)
    shop, other = registry.bot("shop"), registry.bot("other")
    assert shop.flood_limits.model_dump() == {
        "per_bot": "30/s",
        "per_chat": "2/s",
        "per_group": "10/m",
        "burst": 5,
    }
    assert shop.api_retry_for == timedelta(minutes=1)
    assert (other.flood_limits.per_bot, other.flood_limits.per_chat) == ("100/h", "2/s")
    assert other.api_retry_for == timedelta(seconds=10)
    assert rate_per_second("20/m") == pytest.approx(1 / 3)
    assert rate_per_second(other.flood_limits.per_bot) == pytest.approx(100 / 3600)


def test_bad_flood_limits_and_retry_window_are_named(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        one_bot(
            "    flood_limits:\n      per_chat: fast\n      burst: 0\n    api_retry_for: never\n"
        ),
    )
    assert problems_of(path).splitlines()[1:] == [
        f"{path}:6: bots[0] (shop).flood_limits.per_chat: invalid rate 'fast': write "
        "messages per unit, e.g. 30/s, 20/m or 100/h",
        f"{path}:7: bots[0] (shop).flood_limits.burst: should be greater than or equal to 1 "
        "(got 0)",
        f"{path}:8: bots[0] (shop).api_retry_for: 'never' is not allowed here (use 30s, "
        "15m, 12h or 7d)",
    ]


def test_delivery_bounds_inherit_and_override(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "defaults:\n  handling_timeout: 45s\n  update_retries: 3\n"
        + one_bot("    handling_timeout: never\n")
        + one_bot(name="other", token=TOKEN_B)[len("bots:\n") :],
    )
    registry = load_registry(path, environ=ENV)
    assert registry.bot("shop").handling_timeout is None
    assert registry.bot("shop").update_retries == 3
    assert registry.bot("other").handling_timeout == timedelta(seconds=45)
    built_in = load_registry(write(tmp_path, one_bot()), environ=ENV).bot("shop")
    assert (built_in.handling_timeout, built_in.update_retries) == (timedelta(minutes=2), 8)
    negative = write(tmp_path, one_bot("    update_retries: -1\n"))
    assert "(shop).update_retries: should be greater than or equal to 0" in problems_of(negative)


def test_minimal_file_uses_built_in_defaults(tmp_path: Path) -> None:
    registry = load_registry(write(tmp_path, one_bot()), environ={"A_TOKEN": TOKEN_A})
    assert registry.storage.uri is None  # embedded development database
    assert registry.defaults == Defaults()
    assert registry.webhook is None
    assert registry.ops is None
    assert registry.cleanup.batch_size == 1000
    assert registry.bot("shop").state_ttl == timedelta(days=7)
    assert registry.storage.timeout == timedelta(seconds=10)


def test_fsm_strategy_is_spelled_by_name(tmp_path: Path) -> None:
    path = write(tmp_path, one_bot("    fsm_strategy: 1\n"))
    assert problems_of(path) == (
        f"{path}:5: bots[0] (shop).fsm_strategy: unknown fsm_strategy 1 (use user_in_chat, "
        "chat, global_user, user_in_topic, chat_topic)"
    )


def test_empty_optional_values_mean_unset(tmp_path: Path) -> None:
    extra = "    api_server: ${BOT_API_SERVER:-}\n    on_state_expired: ''\n"
    path = write(tmp_path, "storage:\n  uri: ${MONGODB_URI:-}\n" + one_bot(extra))
    registry = load_registry(path, environ={"A_TOKEN": TOKEN_A})
    assert registry.storage.uri is None
    assert registry.bot("shop").api_server is None
    assert registry.bot("shop").on_state_expired is None
    assert registry.bot("shop").token_value == TOKEN_A


def test_routers_may_be_a_single_string(tmp_path: Path) -> None:
    path = write(tmp_path, "bots:\n  - name: a\n    token: ${A_TOKEN}\n    routers: m:router\n")
    assert load_registry(path, environ=ENV).bot("a").routers == ("m:router",)


# --- environment ---------------------------------------------------------------------


def test_missing_variable_is_named_with_file_line_bot_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, one_bot(token="${SHOP_TOKEN}"))
    message = problems_of(path, env={})
    assert message == (
        f"{path}:3: bots[0] (shop).token: environment variable SHOP_TOKEN is not set "
        "(export it with the bot's token, or set it in .env next to botyard.yaml)"
    )


def test_default_value_and_dollar_escape(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "storage:\n  database: ${DB:-fallback_db}\n"
        + one_bot("    settings:\n      price: $$5 ${EMPTY:-none}\n      raw: a$b\n"),
    )
    registry = load_registry(path, environ={"A_TOKEN": TOKEN_A, "EMPTY": ""})
    assert registry.storage.database == "fallback_db"
    assert registry.bot("shop").settings == {"price": "$5 none", "raw": "a$b"}
    registry = load_registry(path, environ={"A_TOKEN": TOKEN_A, "DB": "real"})
    assert registry.storage.database == "real"


@pytest.mark.parametrize(
    ("reference", "environ", "expected"),
    [
        ("${DB-fallback}", {}, "fallback"),
        ("${DB-fallback}", {"DB": ""}, ""),
        ("${DB:-fallback}", {"DB": ""}, "fallback"),
        ("${DB-fallback}", {"DB": "real"}, "real"),
        ("${DB:+alt}", {"DB": "real"}, "alt"),
        ("${DB:+alt}", {"DB": ""}, ""),
        ("${DB+alt}", {"DB": ""}, "alt"),
        ("${DB?needed}", {"DB": ""}, ""),
        ("${DB:?needed}", {"DB": "real"}, "real"),
    ],
)
def test_docker_compose_reference_forms(
    tmp_path: Path, reference: str, environ: dict[str, str], expected: str
) -> None:
    path = write(tmp_path, f"storage:\n  uri: ''\n  database: x{reference}\n" + one_bot())
    registry = load_registry(path, environ={"A_TOKEN": TOKEN_A, **environ})
    assert registry.storage.database == f"x{expected}"


def test_required_references_name_the_variable_and_say_the_message(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "storage:\n  uri: ${MONGO:?set it to the replica set URI}\n  database: ${DB?}\n"
        + one_bot(),
    )
    message = problems_of(path, {"A_TOKEN": TOKEN_A, "MONGO": ""})
    assert (
        f"{path}:2: storage.uri: environment variable MONGO is empty: "
        "set it to the replica set URI" in message
    )
    assert f"{path}:3: storage.database: environment variable DB is not set" in message


def test_invalid_and_unterminated_references(tmp_path: Path) -> None:
    path = write(tmp_path, "storage:\n  database: ${1BAD}\n  uri: ${OPEN\n" + one_bot())
    message = problems_of(path)
    assert f"{path}:2: storage.database: invalid reference ${{1BAD}}" in message
    assert f"{path}:3: storage.uri: unterminated ${{" in message


def test_dotenv_beside_the_file_supplies_missing_variables(tmp_path: Path) -> None:
    write(
        tmp_path,
        f"""\
        # comment
        export A_TOKEN="{TOKEN_A}"
        DB='from_dotenv'\t
        NAME=from_dotenv # trailing comment

        URI=mongodb://dotenv
        """,
        ".env",
    )
    path = write(
        tmp_path,
        "storage:\n  uri: ${URI}\n  database: ${DB}\n"
        + one_bot("    settings: {who: '${NAME}'}\n"),
    )
    registry = load_registry(path, environ={"URI": "mongodb://real-env-wins"})
    assert registry.bot("shop").token == SecretStr(TOKEN_A)
    assert registry.storage.database == "from_dotenv"
    assert registry.storage.uri == "mongodb://real-env-wins"
    assert registry.bot("shop").settings == {"who": "from_dotenv"}


def test_malformed_dotenv_line_is_reported(tmp_path: Path) -> None:
    write(tmp_path, "A_TOKEN\n", ".env")
    path = write(tmp_path, one_bot())
    assert f"{tmp_path / '.env'}:1: expected KEY=value" in problems_of(path, env={})


def test_missing_tokens_tolerated_for_the_sandbox(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        one_bot(token="${NOPE}") + "  - name: other\n    routers: [bots.shop:router]\n",
    )
    registry = load_registry(path, require_tokens=False, environ={})
    assert registry.bot("shop").token is None
    assert registry.bot("other").token is None
    assert registry.bot("shop").masked_token == "(no token)"
    with pytest.raises(ValueError, match="bot 'shop' has no token"):
        _ = registry.bot("shop").token_value
    message = problems_of(path, env={})
    assert f"{path}:3: bots[0] (shop).token: environment variable NOPE is not set" in message
    assert f"{path}:5: bots[1] (other).token: no token: write token: ${{OTHER_TOKEN}}" in message

    filled = registry.with_tokens({"shop": TOKEN_A, "other": TOKEN_B})
    assert filled.bot("other").token == SecretStr(TOKEN_B)
    with pytest.raises(KeyError, match="nobody"):
        registry.with_tokens({"nobody": TOKEN_A})


@pytest.mark.parametrize("reference", ["${A_TOKEN}", "${A_TOKEN:-}", "'${A_TOKEN} '"])
def test_an_empty_token_variable_is_reported_like_an_unset_one(
    tmp_path: Path, reference: str
) -> None:
    path = write(tmp_path, one_bot(token=reference))
    assert problems_of(path, env={**ENV, "A_TOKEN": ""}) == (
        f"{path}:3: bots[0] (shop).token: environment variable A_TOKEN is empty "
        "(export it with the bot's token, or set it in .env next to botyard.yaml)"
    )


def test_where_tokens_are_optional_any_unusable_token_loads_as_none_with_the_reason(
    tmp_path: Path,
) -> None:
    short_id = "123:" + "A" * 34
    path = write(
        tmp_path,
        one_bot(token="${EMPTY}", name="empty")
        + "  - name: unset\n    token: ${UNSET}\n    routers: [bots.shop:router]\n"
        + "  - name: bad\n    token: ${BAD}\n    routers: [bots.shop:router]\n"
        + "  - name: none\n    routers: [bots.shop:router]\n"
        + "  - name: good\n    token: ${A_TOKEN}\n    routers: [bots.shop:router]\n",
    )
    env = {"EMPTY": "", "BAD": short_id, "A_TOKEN": TOKEN_A}
    registry = load_registry(path, require_tokens=False, environ=env)
    assert [bot.token for bot in registry.bots] == [None, None, None, None, SecretStr(TOKEN_A)]
    how = "(export it with the bot's token, or set it in .env next to botyard.yaml)"
    assert registry.token_problems == {
        "empty": f"{path}:3: bots[0] (empty).token: environment variable EMPTY is empty {how}",
        "unset": f"{path}:6: bots[1] (unset).token: environment variable UNSET is not set {how}",
        "bad": f"{path}:9: bots[2] (bad).token: malformed token (expected '<digits>:<secret>', "
        "got 38 characters, the bot id before ':' has 3 digits, expected 5 to 20)",
        "none": f"{path}:11: bots[3] (none).token: no token: write token: ${{NONE_TOKEN}} "
        "and set NONE_TOKEN",
    }
    assert short_id not in repr(registry.token_problems)
    required = problems_of(path, env=env)
    assert required.splitlines()[1:] == list(registry.token_problems.values())
    filled = registry.with_tokens({"empty": TOKEN_B})
    assert list(filled.token_problems) == ["unset", "bad", "none"]


@pytest.mark.parametrize(
    ("token", "hint"),
    [
        ("123:" + "A" * 34, "the bot id before ':' has 3 digits, expected 5 to 20)"),
        ("1" * 21 + ":" + "A" * 34, "the bot id before ':' has 21 digits, expected 5 to 20)"),
        (
            "123:" + "A" * 10,
            "the bot id before ':' has 3 digits, expected 5 to 20, "
            "the secret after ':' has 10 characters, expected 30 to 64)",
        ),
    ],
)
def test_a_bot_id_of_the_wrong_length_is_the_hint(tmp_path: Path, token: str, hint: str) -> None:
    path = write(tmp_path, one_bot(token="${T}"))
    message = problems_of(path, env={"T": token})
    assert message.endswith(hint)
    assert token not in message


def test_problems_across_bots_come_in_the_same_pass_as_field_errors(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        bots:
          - name: shop
            token: ${A_TOKEN}
            routers: [bots.shop:router]
            state_ttl: 5q
          - name: shop
            token: ${A_TOKEN}
            routers: [bots.shop:router]
            mode: webhook
          - name: Bad Name
            namespace: shop2
            token: ${B_TOKEN}
            routers: [bots.shop:router]
            mode: sometimes
          - name: shop2
            token: nonsense
            routers: [not a spec]
        """,
    )
    assert problems_of(path).splitlines() == [
        f"{path}: 9 problems",
        f"{path}:5: bots[0] (shop).state_ttl: invalid duration '5q' (use 30s, 15m, 12h, 7d "
        "or never)",
        f"{path}:6: bots[1] (shop).name: duplicate bot name (also bots[0])",
        f"{path}:7: bots[1] (shop).token: same token as bot 'shop' (bots[0]); each bot needs "
        "its own token",
        f"{path}:9: bots[1] (shop).mode: mode is webhook but the file has no webhook section "
        "(add webhook: with base_url, or use mode: polling)",
        f"{path}:10: bots[2] (Bad Name).name: invalid name 'Bad Name': use 1 to 64 characters "
        "from a-z, 0-9, '_' and '-'",
        f"{path}:14: bots[2] (Bad Name).mode: should be 'polling' or 'webhook' (got 'sometimes')",
        f"{path}:15: bots[3] (shop2).namespace: storage namespace 'shop2' is also used by bot "
        "'Bad Name' (bots[2]); bots sharing a namespace overwrite each other's state",
        f"{path}:16: bots[3] (shop2).token: malformed token (expected '<digits>:<secret>', "
        "got 8 characters, no ':')",
        f"{path}:17: bots[3] (shop2).routers[0]: invalid import path 'not a spec': write "
        "'package.module:attribute', e.g. bots.questionnaire:router",
    ], "shop2's namespace is taken by bots[2], whose namespace key is valid: reported too"


def test_other_missing_variables_still_fail_without_tokens(tmp_path: Path) -> None:
    path = write(tmp_path, "storage:\n  uri: ${MONGO}\n" + one_bot(token="${NOPE}"))
    message = problems_of(path, env={}, require_tokens=False)
    assert message == (
        f"{path}:2: storage.uri: environment variable MONGO is not set (export it, add it to "
        ".env next to botyard.yaml, or write ${MONGO:-})"
    )


# --- validation messages -------------------------------------------------------------


def test_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    path = write(tmp_path, one_bot("    stat_ttl: 1h\n"))
    assert problems_of(path) == (
        f"{path}:5: bots[0] (shop).stat_ttl: unknown key 'stat_ttl' (did you mean 'state_ttl'?)"
    )


def test_unknown_section_lists_allowed_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "zzz: 1\n" + one_bot())
    assert problems_of(path) == (
        f"{path}:1: zzz: unknown key 'zzz' "
        "(allowed: bots, cleanup, cluster, defaults, metrics, ops, storage, webhook)"
    )


def test_duplicate_bot_names(tmp_path: Path) -> None:
    path = write(tmp_path, one_bot() + one_bot(token="${B_TOKEN}").removeprefix("bots:\n"))
    assert problems_of(path) == f"{path}:5: bots[1] (shop).name: duplicate bot name (also bots[0])"


def test_duplicate_tokens_name_both_bots_and_hide_the_token(tmp_path: Path) -> None:
    path = write(tmp_path, one_bot(name="a") + one_bot(name="b").removeprefix("bots:\n"))
    assert problems_of(path) == (
        f"{path}:6: bots[1] (b).token: same token as bot 'a' (bots[0]); "
        "each bot needs its own token"
    )


def test_duplicate_namespaces(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        one_bot(name="a", extra="    namespace: b\n")
        + one_bot(name="b", token="${B_TOKEN}").removeprefix("bots:\n"),
    )
    assert problems_of(path) == (
        f"{path}:6: bots[1] (b).namespace: storage namespace 'b' is also used by bot 'a' "
        "(bots[0]); bots sharing a namespace overwrite each other's state"
    )


@pytest.mark.parametrize(
    ("token", "detail"),
    [
        ("123456789:short", "got 15 characters, the secret after ':' has 5 characters"),
        ("AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw", "got 34 characters, no ':'"),
        ("12345abc:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw", "the part before ':' is not all"),
        ("12345", "got 5 characters, no ':'"),
    ],
)
def test_malformed_token_is_described_not_shown(tmp_path: Path, token: str, detail: str) -> None:
    other = one_bot(name="x", token="${B_TOKEN}")
    path = write(tmp_path, other + one_bot(token="${T}").removeprefix("bots:\n"))
    message = problems_of(path, env={**ENV, "T": token})
    assert message.startswith(
        f"{path}:6: bots[1] (shop).token: malformed token (expected '<digits>:<secret>', "
    )
    assert detail in message
    assert token not in message


def test_token_written_in_the_file_never_appears_in_other_errors(tmp_path: Path) -> None:
    path = write(tmp_path, one_bot(token=TOKEN_A, extra="    state_ttl: oops\n    mode: x\n"))
    message = problems_of(path)
    assert "invalid duration 'oops'" in message
    assert TOKEN_A not in message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("x7d", "invalid duration 'x7d' (use 30s, 15m, 12h, 7d or never)"),
        (
            "0s",
            "duration '0s' is zero; to disable expiry write never (use 30s, 15m, 12h, 7d or never)",
        ),
        ("-5m", "invalid duration '-5m' (use 30s, 15m, 12h, 7d or never)"),
        ("600", "bare number 600 has no unit (use 30s, 15m, 12h, 7d or never; e.g. 600s or 600m)"),
        (
            "'600'",
            "bare number 600 has no unit (use 30s, 15m, 12h, 7d or never; e.g. 600s or 600m)",
        ),
        ("7 days", "invalid duration '7 days' (use 30s, 15m, 12h, 7d or never)"),
        ("1m1h", "invalid duration '1m1h': write each unit once, largest first (e.g. 1h30m)"),
        ("''", "invalid duration '' (use 30s, 15m, 12h, 7d or never)"),
        ("", "expected a duration, got an empty value (use 30s, 15m, 12h, 7d or never)"),
    ],
)
def test_bad_durations(tmp_path: Path, value: str, expected: str) -> None:
    path = write(tmp_path, one_bot(f"    state_ttl: {value}\n"))
    assert problems_of(path) == f"{path}:5: bots[0] (shop).state_ttl: {expected}"


def test_storage_timeout_is_a_positive_duration(tmp_path: Path) -> None:
    path = write(tmp_path, "storage:\n  timeout: 1m30s\n" + one_bot())
    assert load_registry(path, environ=ENV).storage.timeout == timedelta(seconds=90)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("never", "'never' is not allowed here (use 30s, 15m, 12h or 7d)"),
        ("0s", "duration '0s' is zero (use 30s, 15m, 12h or 7d)"),
        ("10", "bare number 10 has no unit (use 30s, 15m, 12h or 7d; e.g. 10s or 10m)"),
        ("10ms", "invalid duration '10ms' (use 30s, 15m, 12h or 7d)"),
    ],
)
def test_bad_storage_timeout(tmp_path: Path, value: str, expected: str) -> None:
    path = write(tmp_path, f"storage:\n  timeout: {value}\n" + one_bot())
    assert problems_of(path) == f"{path}:2: storage.timeout: {expected}"


def test_durations_parse_and_format() -> None:
    assert parse_duration("30s") == timedelta(seconds=30)
    assert parse_duration("15m") == timedelta(minutes=15)
    assert parse_duration("12h") == timedelta(hours=12)
    assert parse_duration("7d") == timedelta(days=7)
    assert parse_duration("2w") == timedelta(weeks=2)
    assert parse_duration(" 1H30m ") == timedelta(minutes=90)
    assert parse_duration("never") is None
    assert parse_duration(timedelta(seconds=5)) == timedelta(seconds=5)
    with pytest.raises(ValueError, match="'never' is not allowed here"):
        parse_duration("never", allow_never=False)
    with pytest.raises(ValueError, match="must be positive"):
        parse_duration(timedelta(0))
    assert format_duration(None) == "never"
    assert format_duration(timedelta(days=8, minutes=1)) == "8d1m"
    for text in ("30s", "15m", "12h", "7d", "1h30m"):
        assert format_duration(parse_duration(text)) == text


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ('"*/10 * * *"', "invalid cron expression '*/10 * * *': Wrong number of fields"),
        ('"61 * * * *"', "invalid cron expression '61 * * * *'"),
        ("10x", "invalid schedule '10x': invalid duration '10x'"),
        ("never", "invalid schedule 'never': 'never' is not allowed here"),
    ],
)
def test_bad_schedules(tmp_path: Path, schedule: str, expected: str) -> None:
    path = write(tmp_path, f"cleanup:\n  schedule: {schedule}\n" + one_bot())
    message = problems_of(path)
    assert message.startswith(f"{path}:2: cleanup.schedule: {expected}")


def test_unquoted_cron_gets_a_yaml_hint(tmp_path: Path) -> None:
    path = write(tmp_path, "cleanup:\n  schedule: */10 * * * *\n" + one_bot())
    message = problems_of(path)
    assert message.startswith(f"{path}:2:14: not valid YAML:")
    assert 'must be quoted, e.g. schedule: "*/10 * * * *"' in message


def test_interval_schedule(tmp_path: Path) -> None:
    path = write(tmp_path, "cleanup:\n  schedule: 10m\n" + one_bot())
    cleanup = load_registry(path, environ=ENV).cleanup
    assert cleanup.interval == timedelta(minutes=10)
    trigger = cleanup.trigger()
    assert isinstance(trigger, IntervalTrigger)
    assert trigger.interval == timedelta(minutes=10)


def test_webhook_mode_needs_the_webhook_section(tmp_path: Path) -> None:
    path = write(tmp_path, one_bot("    mode: webhook\n"))
    assert problems_of(path) == (
        f"{path}:5: bots[0] (shop).mode: mode is webhook but the file has no webhook section "
        "(add webhook: with base_url, or use mode: polling)"
    )


def test_webhook_section_values(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "webhook:\n  base_url: ftp://x\n  listen: 8080\n  max_connections: 101\n"
        "ops:\n  listen: localhost:http\n" + one_bot(),
    )
    assert problems_of(path).splitlines()[1:] == [
        f"{path}:2: webhook.base_url: invalid URL 'ftp://x': expected http://host[:port] "
        "or https://...",
        f"{path}:3: webhook.listen: expected a string, got the number 8080",
        f"{path}:4: webhook.max_connections: should be less than or equal to 100 (got 101)",
        f"{path}:6: ops.listen: invalid listen address 'localhost:http': write host:port, "
        "e.g. 0.0.0.0:8080 or [::]:8080 (port 0 picks a free port)",
    ]


def test_storage_uri_scheme_is_checked_and_password_hidden(tmp_path: Path) -> None:
    path = write(tmp_path, "storage:\n  uri: postgres://me:hunter2@db/x\n" + one_bot())
    assert problems_of(path) == (
        f"{path}:2: storage.uri: expected a MongoDB URI starting with mongodb:// or "
        "mongodb+srv://, got 'postgres://me:***@db/x'"
    )
    path = write(tmp_path, "storage:\n  uri: ''\n  database: a.b\n" + one_bot())
    assert problems_of(path).startswith(f"{path}:3: storage.database: invalid MongoDB database")


def test_all_problems_are_listed_in_file_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        defaults:
          fsm_strategy: per_user
        bots:
          - name: Shop Bot
            token: ${A_TOKEN}
            routers: [not a spec]
          - name: ok
            token: ${MISSING}
            routers: [bots.ok:router]
            max_concurrent_updates: lots
            enabled: perhaps
        """,
    )
    # the invalid defaults.fsm_strategy is reported once, not again for every bot
    assert problems_of(path).splitlines() == [
        f"{path}: 6 problems",
        f"{path}:2: defaults.fsm_strategy: unknown fsm_strategy 'per_user' (use user_in_chat, "
        "chat, global_user, user_in_topic, chat_topic)",
        f"{path}:4: bots[0] (Shop Bot).name: invalid name 'Shop Bot': use 1 to 64 characters "
        "from a-z, 0-9, '_' and '-'",
        f"{path}:6: bots[0] (Shop Bot).routers[0]: invalid import path 'not a spec': write "
        "'package.module:attribute', e.g. bots.questionnaire:router",
        f"{path}:8: bots[1] (ok).token: environment variable MISSING is not set (export it "
        "with the bot's token, or set it in .env next to botyard.yaml)",
        f"{path}:10: bots[1] (ok).max_concurrent_updates: should be a valid integer, unable to "
        "parse string as an integer (got 'lots')",
        f"{path}:11: bots[1] (ok).enabled: should be a valid boolean, unable to interpret input "
        "(got 'perhaps')",
    ]


# --- the file as a whole -------------------------------------------------------------


def test_file_not_found(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert problems_of(path) == f"{path}: file not found"


def test_not_yaml_shows_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "bots:\n  - name: a\n   token: [\n")
    message = problems_of(path)
    assert message.startswith(f"{path}:3:")
    assert "not valid YAML" in message


def test_empty_file(tmp_path: Path) -> None:
    path = write(tmp_path, "# only a comment\n")
    assert problems_of(path) == (
        f"{path}: the file is empty; it needs at least a bots: list (see botyard schema)"
    )


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "- name: a\n")
    assert problems_of(path) == (
        f"{path}:1: the top level must be a mapping of sections (storage, defaults, cleanup, "
        "webhook, ops, cluster, metrics, bots), not a list"
    )


def test_bots_missing_or_empty(tmp_path: Path) -> None:
    path = write(tmp_path, "storage: {}\n")
    assert (
        problems_of(path) == f"{path}: bots: required key is missing (list your bots under bots:)"
    )
    path = write(tmp_path, "bots: []\n")
    assert (
        problems_of(path) == f"{path}:1: bots: no bots listed: add at least one entry under bots:"
    )
    path = write(tmp_path, "bots:\n  - just a string\n")
    assert (
        problems_of(path)
        == f"{path}:2: bots[0]: expected a mapping (key: value lines), got a string"
    )


def test_key_written_twice(tmp_path: Path) -> None:
    path = write(tmp_path, one_bot("    state_ttl: 1h\n    state_ttl: 2h\n"))
    assert problems_of(path) == (
        f"{path}:6: bots[0].state_ttl: key written twice (first at line 5); "
        "YAML would silently keep the last one"
    )


def test_empty_sections_mean_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "storage:\ndefaults:\ncleanup:\nwebhook:\nops:\n" + one_bot())
    registry = load_registry(path, environ=ENV)
    assert registry.webhook is None
    assert registry.defaults == Defaults()


# --- routers -------------------------------------------------------------------------


def check_problems(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(RegistryError) as caught:
        check_registry(path, environ=ENV if env is None else env)
    return list(caught.value.problems)


def registry_with(tmp_path: Path, bots: str, **modules: str) -> Path:
    write_bots(tmp_path, **modules)
    return write(tmp_path, "bots:\n" + textwrap.dedent(bots))


def test_unimportable_router_shows_the_import_error(tmp_path: Path) -> None:
    path = registry_with(
        tmp_path,
        """\
        - name: a
          token: ${A_TOKEN}
          routers: [bots.nope:router, bots.broken:router, bots.ok:routr]
        """,
        broken="x = 1\ny = 1 / 0\n",
        ok=QUESTIONNAIRE_MODULE,
    )
    assert check_problems(path) == [
        f"{path}:4: bots[0] (a).routers[0]: cannot import bots.nope (for bots.nope:router): "
        "ModuleNotFoundError: No module named 'bots.nope'",
        f"{path}:4: bots[0] (a).routers[1]: cannot import bots.broken (for bots.broken:router):"
        f" ZeroDivisionError: division by zero (at {Path('bots', 'broken.py')}:2)",
        f"{path}:4: bots[0] (a).routers[2]: bots.ok has no attribute 'routr' "
        "(did you mean 'router'?) (for bots.ok:routr)",
    ]


def test_syntax_error_in_router_module(tmp_path: Path) -> None:
    path = registry_with(
        tmp_path,
        "- name: a\n  token: ${A_TOKEN}\n  routers: [bots.bad:router]\n",
        bad="def f(:\n",
    )
    (problem,) = check_problems(path)
    assert "SyntaxError" in problem
    assert f"(at {Path('bots', 'bad.py')}:1)" in problem


def test_router_object_listed_for_two_bots(tmp_path: Path) -> None:
    path = registry_with(
        tmp_path,
        """\
        - name: a
          token: ${A_TOKEN}
          routers: [bots.shop:router]
        - name: b
          token: ${B_TOKEN}
          routers: [bots.shop:router]
        """,
        shop=QUESTIONNAIRE_MODULE,
    )
    assert check_problems(path) == [
        f"{path}:7: bots[1] (b).routers[0]: router bots.shop:router is a Router object and is "
        "listed for bots 'a' and 'b'; aiogram routers attach to one Dispatcher only: expose a "
        "factory function instead"
    ]
    registry = load_registry(path, environ=ENV)
    routers = RouterResolver(registry.base_dir)
    routers.resolve(registry.bot("a"))
    with pytest.raises(RegistryError, match="listed for bots 'a' and 'b'"):
        routers.resolve(registry.bot("b"))
    routers.release("a")
    assert routers.resolve(registry.bot("b")).build() == [sys.modules["bots.shop"].router]


def test_shared_router_of_a_disabled_bot_is_fine(tmp_path: Path) -> None:
    path = registry_with(
        tmp_path,
        """\
        - name: a
          token: ${A_TOKEN}
          routers: [bots.shop:router]
        - name: b
          token: ${B_TOKEN}
          routers: [bots.shop:router]
          enabled: false
        """,
        shop=QUESTIONNAIRE_MODULE,
    )
    assert check_registry(path, environ=ENV).summary.startswith(f"{path}: OK: 2 bot(s), 1 enabled")


def test_factory_builds_a_new_router_for_each_bot(tmp_path: Path) -> None:
    path = registry_with(
        tmp_path,
        """\
        - name: a
          token: ${A_TOKEN}
          routers: [bots.shop:make_router]
        - name: b
          token: ${B_TOKEN}
          routers: [bots.shop:make_router]
        """,
        shop=SHOP_MODULE,
    )
    registry = load_registry(path, environ=ENV)
    routers = RouterResolver(registry.base_dir).resolve_all(registry.enabled_bots)
    assert set(routers) == {"a", "b"}
    calls = sys.modules["bots.shop"].calls
    assert len(calls) == 2, "one probe of the list of specs, calling the factory twice"
    assert routers["a"].used_update_types == routers["b"].used_update_types == []
    (router_a,), (router_b,) = routers["a"].build(), routers["b"].build()
    assert isinstance(router_a, Router)
    assert router_a is not router_b
    assert len(calls) == 4, "then once for each bot's Dispatcher"


def test_factory_returning_one_router_twice(tmp_path: Path) -> None:
    lazy = "from aiogram import Router\nr = Router()\ndef make():\n    return r\n"
    path = registry_with(
        tmp_path,
        """\
        - name: a
          token: ${A_TOKEN}
          routers: [bots.lazy:make]
        - name: b
          token: ${B_TOKEN}
          routers: [bots.lazy:make]
        """,
        lazy=lazy,
    )
    assert check_problems(path) == [
        f"{path}:{line}: bots[{index}] ({name}).routers[0]: factory bots.lazy:make returned the "
        "same Router on two calls; a factory must build a new Router on every call"
        for line, index, name in ((4, 0, "a"), (7, 1, "b"))
    ]


def test_wrong_kinds_of_router_attributes(tmp_path: Path) -> None:
    module = """\
        from aiogram import Router
        number = 5
        parent = Router(name="parent")
        child = Router(name="child")
        parent.include_router(child)
        def returns_none():
            return None
        def needs_args(x):
            return Router()
        async def coroutine():
            return Router()
        def raises():
            raise RuntimeError("boom")
        """
    write_bots(tmp_path, odd=textwrap.dedent(module))
    specs = ["number", "child", "returns_none", "needs_args", "coroutine", "raises", "parent"]
    bot = BotConfig(name="a", token=SecretStr(TOKEN_A), routers=[f"bots.odd:{s}" for s in specs])
    with pytest.raises(RegistryError) as caught:
        resolve_routers(bot, tmp_path)
    assert caught.value.problems == (
        "bot 'a' routers[0]: bots.odd:number is an object of type int; expected an aiogram "
        "Router or a function returning one",
        "bot 'a' routers[1]: bots.odd:child is already included in router 'parent'; list that "
        "router instead, or expose a factory that builds a new one",
        "bot 'a' routers[2]: factory bots.odd:returns_none returned an object of type NoneType;"
        " it must return an aiogram Router",
        "bot 'a' routers[3]: bots.odd:needs_args is a factory that needs arguments; it must "
        "take none",
        "bot 'a' routers[4]: bots.odd:coroutine is an async function; a router factory must "
        "be a plain def",
        f"bot 'a' routers[5]: factory bots.odd:raises raised RuntimeError: boom "
        f"(at {tmp_path / 'bots' / 'odd.py'}:13)",
    )


def test_router_listed_twice_for_one_bot(tmp_path: Path) -> None:
    write_bots(tmp_path, shop=QUESTIONNAIRE_MODULE)
    bot = BotConfig(
        name="a", token=SecretStr(TOKEN_A), routers=["bots.shop:router", "bots.shop:router"]
    )
    with pytest.raises(
        RegistryError, match=r"is the same Router as bots\.shop:router, listed twice"
    ):
        resolve_routers(bot, tmp_path)


def test_base_dir_is_added_to_sys_path_once(tmp_path: Path) -> None:
    write_bots(tmp_path, shop=QUESTIONNAIRE_MODULE)
    bot = BotConfig(name="a", token=SecretStr(TOKEN_A), routers=["bots.shop:router"])
    resolve_routers(bot, tmp_path)
    resolve_routers(bot.model_copy(update={"name": "b"}), tmp_path)
    assert sys.path.count(str(tmp_path)) == 1


def test_resolve_callable_requires_an_async_function(tmp_path: Path) -> None:
    write_bots(tmp_path, hooks="async def ok(*a):\n    pass\ndef sync(*a):\n    pass\n")
    hook = resolve_callable("bots.hooks:ok", tmp_path)
    assert hook is sys.modules["bots.hooks"].ok
    with pytest.raises(RegistryError) as caught:
        resolve_callable("bots.hooks:sync", tmp_path, where="here")
    assert str(caught.value) == (
        "here: bots.hooks:sync is an object of type function, expected an async function "
        "(async def)"
    )


def test_check_reports_bad_hooks(tmp_path: Path) -> None:
    path = registry_with(
        tmp_path,
        """\
        - name: a
          token: ${A_TOKEN}
          routers: [bots.q:router]
          on_state_expired: bots.q:missing
        """,
        q=QUESTIONNAIRE_MODULE,
    )
    assert check_problems(path) == [
        f"{path}:5: bots[0] (a).on_state_expired: bots.q has no attribute 'missing' "
        "(for bots.q:missing)"
    ]


def test_check_returns_load_problems(tmp_path: Path) -> None:
    path = write(tmp_path, one_bot("    stat_ttl: 1h\n"))
    assert check_problems(path) == [
        f"{path}:5: bots[0] (shop).stat_ttl: unknown key 'stat_ttl' (did you mean 'state_ttl'?)"
    ]


@pytest.mark.parametrize(
    ("section", "bots", "labelled"),
    [
        ("", PER_BOT_METRICS_UP_TO, True),
        ("", PER_BOT_METRICS_UP_TO + 1, False),
        ("metrics:\n  per_bot: auto\n", 1, True),
        ("metrics:\n  per_bot: true\n", 10_000, True),
        ("metrics:\n  per_bot: false\n", 1, False),
        ("metrics:\n", 10_000, False),
    ],
)
def test_metrics_per_bot_labels_by_bot_up_to_a_size_on_auto(
    tmp_path: Path, section: str, bots: int, labelled: bool
) -> None:
    registry = load_registry(write(tmp_path, section + one_bot()), environ=ENV)
    assert registry.metrics.labels_bots(bots) is labelled


def test_metrics_per_bot_takes_only_auto_or_a_boolean(tmp_path: Path) -> None:
    path = write(tmp_path, "metrics:\n  per_bot: sometimes\n" + one_bot())
    assert problems_of(path) == (
        f"{path}:2: metrics.per_bot: should be auto, true or false, not 'sometimes'"
    )


# --- schema --------------------------------------------------------------------------


def test_json_schema_documents_every_key() -> None:
    schema = registry_json_schema()
    assert schema["$schema"].startswith("https://json-schema.org/")
    definitions = schema["$defs"]
    keys: set[str] = set()

    def visit(node: dict[str, Any], where: str) -> None:
        for key, prop in node.get("properties", {}).items():
            assert prop.get("description"), f"{where}.{key} has no description"
            keys.add(key)
        assert node.get("additionalProperties") is False, where

    visit(schema, "top")
    for name, definition in definitions.items():
        visit(definition, name)
    expected = {
        "storage", "uri", "database", "timeout", "defaults", "state_ttl", "fsm_strategy",
        "max_concurrent_updates", "cleanup", "schedule", "batch_size", "webhook", "base_url",
        "listen", "max_connections", "header_timeout", "body_timeout",
        "max_connections_per_client", "ops", "bots", "name", "token", "routers", "api_server",
        "namespace", "enabled", "mode", "on_state_expired", "settings", "flood_limits",
        "per_bot", "per_chat", "per_group", "burst", "api_retry_for",
        "bot_properties", "parse_mode", "disable_notification", "protect_content",
        "allow_sending_without_reply", "link_preview_is_disabled",
        "link_preview_prefer_small_media", "link_preview_prefer_large_media",
        "link_preview_show_above_text", "show_caption_above_media",
        "middlewares", "middleware", "event", "scope",
        "handling_timeout", "update_retries", "cluster", "heartbeat_interval", "failover_time",
        "metrics",
    }  # fmt: skip
    assert keys == expected
    assert "path" not in schema["properties"]
    assert schema["required"] == ["bots"]
    bot = definitions["BotConfig"]["properties"]
    assert "default" not in bot["state_ttl"]  # inherited from defaults, not fixed
    defaults = definitions["Defaults"]["properties"]
    assert defaults["state_ttl"]["default"] == "7d"
    assert definitions["StorageConfig"]["properties"]["timeout"]["default"] == "10s"
    assert defaults["fsm_strategy"]["default"] == "user_in_chat"
    assert bot["fsm_strategy"]["enum"] == [
        "user_in_chat", "chat", "global_user", "user_in_topic", "chat_topic",
    ]  # fmt: skip


# --- reload --------------------------------------------------------------------------


def test_diff_registries(tmp_path: Path) -> None:
    old_text = """\
        defaults:
          state_ttl: 7d
        bots:
          - {name: same, token: "${A_TOKEN}", routers: [m:r], state_ttl: 1h}
          - {name: inherits, token: "${B_TOKEN}", routers: [m:r]}
          - {name: gone, token: "111111:CCHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw", routers: [m:r]}
          - {name: disabled, token: "222222:CCHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw", routers: [m:r]}
          - {name: edited, token: "333333:CCHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw", routers: [m:r]}
        """
    new_text = """\
        defaults:
          state_ttl: 1d
        cleanup:
          schedule: 5m
        bots:
          - {name: same, token: "${A_TOKEN}", routers: [m:r], state_ttl: 1h}
          - {name: inherits, token: "${B_TOKEN}", routers: [m:r]}
          - {name: disabled, token: "222222:CCHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw", routers: [m:r],
             enabled: false}
          - {name: edited, token: "333333:CCHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw", routers: [m:r, m:s]}
          - {name: new, token: "444444:CCHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw", routers: [m:r]}
        """
    old = load_registry(write(tmp_path, old_text, "old.yaml"), environ=ENV)
    new = load_registry(write(tmp_path, new_text, "new.yaml"), environ=ENV)
    diff = diff_registries(old, new)
    assert diff.added == ("new",)
    assert diff.removed == ("gone", "disabled")
    assert diff.changed == ("inherits", "edited")
    assert diff.unchanged == ("same",)
    assert diff.sections == ("cleanup",)
    assert diff.bots_affected
    again = diff_registries(new, load_registry(tmp_path / "new.yaml", environ=ENV))
    assert not again.bots_affected
    assert again.sections == ()
    rotated = diff_registries(new, load_registry(tmp_path / "new.yaml", environ={
        **ENV, "A_TOKEN": "123456789:ZZHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"}))  # fmt: skip
    assert rotated.changed == ("same",)


def test_webhook_changes_affect_webhook_bots_only(tmp_path: Path) -> None:
    text = """\
        webhook: {base_url: "https://%s"}
        bots:
          - {name: hook, token: "${A_TOKEN}", routers: [m:r], mode: webhook}
          - {name: poll, token: "${B_TOKEN}", routers: [m:r]}
        """
    old = load_registry(write(tmp_path, text % "a.example", "a.yaml"), environ=ENV)
    new = load_registry(write(tmp_path, text % "b.example", "b.yaml"), environ=ENV)
    diff = diff_registries(old, new)
    assert diff.changed == ("hook",)
    assert diff.unchanged == ("poll",)
    assert diff.sections == ("webhook",)


# --- models used directly ------------------------------------------------------------


def test_models_are_frozen_and_forbid_extra_keys() -> None:
    bot = BotConfig(name="a", token=SecretStr(TOKEN_A), routers=["m:r"])
    with pytest.raises(ValidationError):
        bot.name = "b"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="stat_ttl"):
        BotConfig.model_validate({"name": "a", "token": TOKEN_A, "routers": ["m:r"], "stat_ttl": 1})


def test_model_errors_hide_token_values() -> None:
    with pytest.raises(ValidationError) as caught:
        BotConfig.model_validate({"name": "a", "token": "123:" + "x" * 20, "routers": ["m:r"]})
    assert "x" * 20 not in str(caught.value)


def test_registry_built_in_python_checks_conflicts(tmp_path: Path) -> None:
    bot = {"name": "a", "token": TOKEN_A, "routers": ["m:r"]}
    with pytest.raises(ValidationError, match=r"bots\[1\]\.name: duplicate bot name"):
        Registry.model_validate({"path": tmp_path / "x.yaml", "bots": [bot, bot]})
    registry = Registry(path=tmp_path / "x.yaml", bots=(BotConfig.model_validate(bot),))
    with pytest.raises(KeyError, match=r"no bot named 'b' in x.yaml \(bots: a\)"):
        registry.bot("b")


# --- tokens --------------------------------------------------------------------------


def test_token_helpers() -> None:
    assert check_token(f"  {TOKEN_A}\n") == TOKEN_A
    assert mask_token(TOKEN_A) == "123456789:***"
    assert mask_token("garbage") == "***"
    url = f"https://api.telegram.org/bot{TOKEN_A}/getMe and {TOKEN_B}."
    assert redact(url) == "https://api.telegram.org/bot123456789:***/getMe and 987654321:***."
    assert redact("x short-secret y", ["short-secret"]) == "x *** y"
    assert mask_uri("mongodb://u:p4ss@h:1/db?x=1") == "mongodb://u:***@h:1/db?x=1"
    assert mask_uri("mongodb://h/db") == "mongodb://h/db"


def test_token_redactor_finds_known_tokens_by_bot_id() -> None:
    short = "123456789:too-short"  # a known token the generic pattern misses
    glued = f"{TOKEN_B}_suffix"  # followed by a secret character: no generic match
    redactor = TokenRedactor([f"{n}:{'x' * 40}" for n in range(10_000, 20_000)])
    tiny_id = "1234:not-a-real-bot-id"  # too short an id to be looked up by it
    redactor.remember([short, TOKEN_B, "", "odd-secret", tiny_id])
    assert redactor(f"a {short}, b 7{short}, c {glued}, d odd-secret, e {tiny_id}") == (
        "a 123456789:***, b 7123456789:***, c 987654321:***_suffix, d ***, e 1234:***"
    )
    assert redactor(f"unknown {TOKEN_A} and 12345:{'x' * 40}") == (
        "unknown 123456789:*** and 12345:***"
    )
    assert redactor("no tokens: 10000, 99:") == "no tokens: 10000, 99:"


def test_a_probe_learns_update_types_and_lifecycle_hooks_once_per_spec(tmp_path: Path) -> None:
    module = """\
        from aiogram import Router
        calls = []
        def make():
            calls.append(1)
            if len(calls) > 3:
                raise RuntimeError("database gone")
            router = Router()
            router.message.register(lambda message: None)
            return router
        def hooked():
            router = Router()
            router.edited_message.register(lambda message: None)
            router.startup.register(lambda: None)
            return router
        """
    write_bots(tmp_path, flaky=textwrap.dedent(module))
    registry = RouterResolver(tmp_path)
    plain = registry.resolve(
        BotConfig(name="a", token=SecretStr(TOKEN_A), routers=["bots.flaky:make"])
    )
    both = registry.resolve(
        BotConfig(
            name="b", token=SecretStr(TOKEN_B), routers=["bots.flaky:make", "bots.flaky:hooked"]
        )
    )
    assert (plain.used_update_types, plain.lifecycle_hooks) == (["message"], False)
    assert (both.used_update_types, both.lifecycle_hooks) == (["edited_message", "message"], True)
    assert len(sys.modules["bots.flaky"].calls) == 2, "probed once for both bots"
    plain.build()
    with pytest.raises(RouterBuildError) as caught:
        both.build()
    assert str(caught.value) == (
        "factory bots.flaky:make raised RuntimeError: database gone "
        f"(at {tmp_path / 'bots' / 'flaky.py'}:6)"
    )


def test_an_alias_bomb_is_refused_naming_its_line(tmp_path: Path) -> None:
    """A file under 1 KB whose settings expand to a billion values ("billion laughs")."""
    levels = ["      a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 9):
        refs = ", ".join([f"*a{level - 1}"] * 10)
        levels.append(f"      a{level}: &a{level} [{refs}]")
    path = tmp_path / "botyard.yaml"
    path.write_text(one_bot("    settings:\n" + "\n".join(levels) + "\n"))
    assert path.stat().st_size < 1024
    message = problems_of(path)
    assert f"{path}:13: bots[0].settings.a8[0]: aliases expand to 1,111,111 values" in message
    assert "(the value anchored at line 11), more than the 1,000,000" in message


def test_aliases_of_a_sane_size_still_load(tmp_path: Path) -> None:
    path = tmp_path / "botyard.yaml"
    path.write_text(
        "defaults: &defaults\n  state_ttl: 1h\nbots:\n"
        + "".join(
            f"  - name: b{n}\n    token: ${{A_TOKEN}}\n    routers: [bots.shop:router]\n"
            "    settings: &common {admins: [1, 2, 3], texts: {hi: hello}}\n"
            if n == 0
            else f"  - name: b{n}\n    token: ${{B_TOKEN}}\n    routers: [bots.shop:router]\n"
            "    settings: *common\n"
            for n in range(2)
        )
    )
    registry = load_registry(path, environ=ENV)
    assert registry.bots[1].settings == {"admins": [1, 2, 3], "texts": {"hi": "hello"}}


def test_fsm_strategy_names_are_aiogram_strategies_member_for_member() -> None:
    assert [name.name for name in FSMStrategyName] == [strategy.name for strategy in FSMStrategy]
    for name in FSMStrategyName:
        assert name.to_aiogram() is FSMStrategy[name.name]


def test_cluster_timings_take_durations_or_seconds_and_need_three_heartbeats(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "cluster:\n  heartbeat_interval: 500ms\n" + one_bot())
    assert "cluster.heartbeat_interval" in problems_of(path)
    path = write(tmp_path, "cluster:\n  heartbeat_interval: 0.5\n  failover_time: 2s\n" + one_bot())
    registry = load_registry(path, environ=ENV)
    assert registry.cluster is not None
    assert (registry.cluster.heartbeat_interval, registry.cluster.failover_time) == (0.5, 2.0)
    assert (registry.cluster.lapse, registry.cluster.fence) == (1.5, 1.0)
    path = write(tmp_path, "cluster:\n" + one_bot())
    assert load_registry(path, environ=ENV).cluster == ClusterConfig()
    path = write(tmp_path, "cluster:\n  heartbeat_interval: 10s\n" + one_bot())
    assert "at least three heartbeat_interval" in problems_of(path)
    assert load_registry(write(tmp_path, one_bot()), environ=ENV).cluster is None
