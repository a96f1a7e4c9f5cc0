"""Per-bot aiogram defaults (``bot_properties``) and middlewares, from ``defaults`` and each bot."""

from __future__ import annotations

import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiogram import Dispatcher

from botyard.registry.loader import check_registry, load_registry
from botyard.registry.models import RegistryError
from botyard.runtime.routers import RouterResolver

TOKEN = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
OTHER = "987654321:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"

MIDDLEWARES = """\
from aiogram import BaseMiddleware, Router


class Counting(BaseMiddleware):
    async def __call__(self, handler, event, data):
        return await handler(event, data)


shared = Counting()


async def plain(handler, event, data):
    return await handler(event, data)


def factory():
    return Counting()


def broken_factory():
    return 42


not_a_middleware = "text"
router = Router()
"""


@pytest.fixture
def module(tmp_path: Path) -> Iterator[str]:
    """A module of middlewares in tmp_path, under a name no other test uses."""
    name = f"middlewares_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(MIDDLEWARES)
    yield name
    sys.modules.pop(name, None)


def registry(folder: Path, defaults: str, bots: str) -> Path:
    path = folder / "botyard.yaml"
    path.write_text(
        "storage:\n  uri: mongodb://127.0.0.1:1\n"
        + textwrap.indent(textwrap.dedent(defaults), "  ").replace("  ", "defaults:\n  ", 1)
        + "bots:\n"
        + textwrap.dedent(bots)
    )
    return path


def test_bot_properties_merge_key_by_key_and_middlewares_add_up(
    tmp_path: Path, module: str
) -> None:
    path = registry(
        tmp_path,
        f"""\
        bot_properties: {{parse_mode: HTML, protect_content: true}}
        middlewares: [{module}:shared]
        """,
        f"""\
          - name: shop
            token: {TOKEN}
            routers: [{module}:router]
            bot_properties: {{parse_mode: MarkdownV2}}
            middlewares:
              - {{middleware: {module}:factory, event: message, scope: inner}}
          - name: news
            token: {OTHER}
            routers: [{module}:router]
        """,
    )
    loaded = load_registry(path)
    shop, news = loaded.bot("shop"), loaded.bot("news")
    assert shop.bot_properties.given() == {"parse_mode": "MarkdownV2", "protect_content": True}
    assert news.bot_properties.given() == {"parse_mode": "HTML", "protect_content": True}
    assert [(m.middleware, m.event, m.scope) for m in shop.middlewares] == [
        (f"{module}:shared", "update", "outer"),
        (f"{module}:factory", "message", "inner"),
    ]
    assert [m.middleware for m in news.middlewares] == [f"{module}:shared"]

    routers = RouterResolver(tmp_path)
    first, second = Dispatcher(), Dispatcher()
    routers.resolve(shop).install_middlewares(first)
    routers.resolve(shop).install_middlewares(second)
    [shared] = [m for m in first.update.outer_middleware if type(m).__name__ == "Counting"]
    [made] = list(first.message.middleware)
    [made_again] = list(second.message.middleware)
    assert type(made).__name__ == "Counting"
    assert made is not made_again, "a factory makes a middleware per Dispatcher"
    assert shared in list(second.update.outer_middleware), "an instance is shared"


def test_plain_async_functions_are_middlewares_themselves(tmp_path: Path, module: str) -> None:
    path = registry(
        tmp_path,
        f"middlewares: [{module}:plain]\n",
        f"  - name: shop\n    token: {TOKEN}\n    routers: [{module}:router]\n",
    )
    dispatcher = Dispatcher()
    RouterResolver(tmp_path).resolve(load_registry(path).bot("shop")).install_middlewares(
        dispatcher
    )
    assert any(getattr(m, "__name__", "") == "plain" for m in dispatcher.update.outer_middleware)


def test_each_bad_property_or_middleware_is_named(tmp_path: Path, module: str) -> None:
    path = registry(
        tmp_path,
        "bot_properties: {parse_mode: HTM}\n",
        f"""\
          - name: shop
            token: {TOKEN}
            routers: [{module}:router]
            middlewares:
              - {module}:not_a_middleware
              - {module}:broken_factory
              - {{middleware: {module}:shared, event: mesage}}
              - {{middleware: {module}:shared, scope: around}}
        """,
    )
    with pytest.raises(RegistryError) as invalid:
        load_registry(path)
    message = str(invalid.value)
    assert "defaults.bot_properties.parse_mode" in message
    assert "bots[0] (shop).middlewares[3].scope" in message

    path.write_text(path.read_text().replace("HTM}", "HTML}").replace(", scope: around", ""))
    with pytest.raises(RegistryError) as unusable:
        check_registry(path)
    problems = str(unusable.value)
    assert f"middlewares[0]: {module}:not_a_middleware is an object of type str" in problems
    assert f"middlewares[1]: {module}:broken_factory() returned an object of type int" in problems
    assert "middlewares[2].event: unknown event 'mesage'" in problems
    assert TOKEN not in problems
