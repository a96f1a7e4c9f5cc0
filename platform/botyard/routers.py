"""Importing the routers and hooks that a registry names as ``module:attribute``.

Two aiogram facts shape this module. A ``Router`` can be included in one
parent only, so a module-level router cannot serve two bots: a module that
several bots share must expose a factory function, called once per bot. And
import errors in user code are the most common way a deployment breaks, so each
one is reported with the spec, the exception, and the file and line that raised it.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import sys
import traceback
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from aiogram import Router

from botyard.config import BotConfig, Loc, RegistryError, format_loc

__all__ = ["Locator", "RouterRegistry", "resolve_callable", "resolve_routers"]

Locator = Callable[[BotConfig, Loc], str]
"""Where a bot's key is, for error messages: ``(bot, ("routers", 0))`` -> ``"file:12: ..."``."""


def _default_locator(bot: BotConfig, loc: Loc) -> str:
    return f"bot {bot.name!r} {format_loc(loc)}"


_IMPORTLIB = Path(importlib.__file__).parent


class _SpecError(Exception):
    """A spec that cannot be turned into the object it names; the message says why."""


def resolve_routers(
    bot: BotConfig, base_dir: Path, *, locate: Locator = _default_locator
) -> list[Router]:
    """Import the bot's routers, calling factories to get fresh ones.

    Raises :class:`RegistryError` listing every router of the bot that failed.
    Does not check sharing between bots; :class:`RouterRegistry` does.
    """
    return [entry.router for entry in _resolve_entries(bot, base_dir, locate)]


def resolve_callable(
    spec: str, base_dir: Path, *, where: str | None = None
) -> Callable[..., Awaitable[Any]]:
    """Import a hook such as ``on_state_expired``; it must be an async callable."""
    try:
        found = _import_object(spec, base_dir)
        if not _is_async_callable(found):
            raise _SpecError(
                f"{spec} is {_describe(found)}, expected an async function (async def)"
            )
    except _SpecError as error:
        raise RegistryError([f"{where}: {error}" if where else str(error)]) from None
    return found


@dataclass(frozen=True)
class _Entry:
    spec: str
    index: int
    router: Router
    from_factory: bool


class RouterRegistry:
    """Hands routers to the bots of one process, never the same Router object to two bots.

    aiogram would raise when the second Dispatcher includes the router, after
    the first bot is already running; here the conflict is reported up front,
    with both bots named. Call :meth:`release` when a bot stops for good, so a
    restarted bot may take fresh routers.
    """

    def __init__(self, base_dir: Path, *, locate: Locator = _default_locator) -> None:
        self.base_dir = base_dir
        self._locate = locate
        self._owners: dict[int, tuple[str, _Entry]] = {}

    def resolve(self, bot: BotConfig) -> list[Router]:
        """The routers for ``bot``; :class:`RegistryError` if any is unusable or taken."""
        entries = _resolve_entries(bot, self.base_dir, self._locate)
        problems = []
        for entry in entries:
            owner = self._owners.get(id(entry.router))
            if owner and owner[0] != bot.name:
                problems.append(
                    f"{self._locate(bot, ('routers', entry.index))}: "
                    f"{_shared_message(entry, owner[0], owner[1], bot.name)}"
                )
        if problems:
            raise RegistryError(problems)
        for entry in entries:
            self._owners[id(entry.router)] = (bot.name, entry)
        return [entry.router for entry in entries]

    def resolve_all(self, bots: Iterable[BotConfig]) -> dict[str, list[Router]]:
        """Routers for several bots, reporting the problems of all of them at once."""
        routers: dict[str, list[Router]] = {}
        problems: list[str] = []
        for bot in bots:
            try:
                routers[bot.name] = self.resolve(bot)
            except RegistryError as error:
                problems.extend(error.problems)
        if problems:
            raise RegistryError(problems)
        return routers

    def release(self, bot_name: str) -> None:
        """Forget the routers given to ``bot_name``."""
        self._owners = {key: owner for key, owner in self._owners.items() if owner[0] != bot_name}


def _shared_message(entry: _Entry, first_bot: str, first: _Entry, bot_name: str) -> str:
    if entry.from_factory:
        return (
            f"factory {entry.spec} returned the Router that bot {first_bot!r} already uses; "
            "a factory must build a new Router on every call"
        )
    return (
        f"router {entry.spec} is a Router object and is listed for bots {first_bot!r} and "
        f"{bot_name!r}; aiogram routers attach to one Dispatcher only: expose a factory "
        "function instead"
        + ("" if first.spec == entry.spec else f" (bot {first_bot!r} lists it as {first.spec})")
    )


def _resolve_entries(bot: BotConfig, base_dir: Path, locate: Locator) -> list[_Entry]:
    entries: list[_Entry] = []
    problems: list[str] = []
    seen: dict[int, str] = {}
    for index, spec in enumerate(bot.routers):
        try:
            entry = _router_entry(spec, index, base_dir)
            if id(entry.router) in seen:
                raise _SpecError(
                    f"{spec} is the same Router as {seen[id(entry.router)]}, "
                    "listed twice for this bot"
                )
        except _SpecError as error:
            problems.append(f"{locate(bot, ('routers', index))}: {error}")
            continue
        seen[id(entry.router)] = spec
        entries.append(entry)
    if problems:
        raise RegistryError(problems)
    return entries


def _router_entry(spec: str, index: int, base_dir: Path) -> _Entry:
    found = _import_object(spec, base_dir)
    if isinstance(found, Router):
        router, from_factory = found, False
    elif callable(found):
        router, from_factory = _call_factory(spec, found), True
    else:
        raise _SpecError(
            f"{spec} is {_describe(found)}; expected an aiogram Router or a function returning one"
        )
    if router.parent_router is not None:
        raise _SpecError(
            f"{spec} is already included in router {router.parent_router.name!r}; list that "
            "router instead, or expose a factory that builds a new one"
        )
    return _Entry(spec, index, router, from_factory)


def _call_factory(spec: str, factory: Callable[..., Any]) -> Router:
    if inspect.iscoroutinefunction(factory):
        raise _SpecError(f"{spec} is an async function; a router factory must be a plain def")
    try:
        inspect.signature(factory).bind()
    except TypeError:
        raise _SpecError(f"{spec} is a factory that needs arguments; it must take none") from None
    except ValueError:  # no signature available (some builtins): just try the call
        pass
    try:
        router = factory()
    except (Exception, SystemExit) as error:
        raise _SpecError(f"factory {spec} raised {_exception(error)}") from None
    if not isinstance(router, Router):
        raise _SpecError(
            f"factory {spec} returned {_describe(router)}; it must return an aiogram Router"
        )
    return router


def _import_object(spec: str, base_dir: Path) -> object:
    """Import ``module:attr.sub`` with ``base_dir`` first on ``sys.path``."""
    module_name, _, attribute = spec.partition(":")
    folder = str(base_dir.absolute())
    if folder not in sys.path:
        sys.path.insert(0, folder)
    if module_name not in sys.modules:
        importlib.invalidate_caches()  # files created since the last import must be seen
    try:
        found: object = importlib.import_module(module_name)
    except (Exception, SystemExit) as error:
        raise _SpecError(
            f"cannot import {module_name} (for {spec}): {_exception(error, base_dir)}"
        ) from None
    path = module_name
    for part in attribute.split("."):
        if not hasattr(found, part):
            names = [name for name in dir(found) if not name.startswith("_")]
            close = difflib.get_close_matches(part, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise _SpecError(f"{path} has no attribute {part!r}{hint} (for {spec})")
        found = getattr(found, part)
        path = f"{path}.{part}"
    return found


def _exception(error: BaseException, base_dir: Path | None = None) -> str:
    """``"ZeroDivisionError: division by zero (at bots/shop.py:3)"``."""
    text = f"{type(error).__name__}: {error}"
    if isinstance(error, SyntaxError) and error.filename:
        return f"{text} (at {_short(error.filename, base_dir)}:{error.lineno})"
    frames = [
        frame
        for frame in traceback.extract_tb(error.__traceback__)
        if not frame.filename.startswith("<frozen ")
        and frame.filename != __file__
        and not _is_below(frame.filename, _IMPORTLIB)
    ]
    if base_dir is not None:
        inside = [frame for frame in frames if _is_below(frame.filename, base_dir)]
        frames = inside or frames
    if not frames:
        return text
    return f"{text} (at {_short(frames[-1].filename, base_dir)}:{frames[-1].lineno})"


def _is_below(filename: str, folder: Path) -> bool:
    return Path(filename).absolute().is_relative_to(folder.absolute())


def _short(filename: str, base_dir: Path | None) -> str:
    if base_dir is not None and _is_below(filename, base_dir):
        return str(Path(filename).absolute().relative_to(base_dir.absolute()))
    return filename


def _is_async_callable(found: object) -> TypeGuard[Callable[..., Awaitable[Any]]]:
    return inspect.iscoroutinefunction(found) or inspect.iscoroutinefunction(
        getattr(found, "__call__", None)  # noqa: B004 - instances with an async __call__
    )


def _describe(found: object) -> str:
    if inspect.ismodule(found):
        return f"a module ({found.__name__})"
    if isinstance(found, type):
        return f"a class ({found.__qualname__})"
    kind = type(found)
    prefix = "" if kind.__module__ == "builtins" else f"{kind.__module__}."
    return f"an object of type {prefix}{kind.__qualname__}"
