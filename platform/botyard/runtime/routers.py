"""Importing the routers, middlewares and hooks that a registry names as ``module:attribute``.

Two aiogram facts shape this module. A ``Router`` can be included in one
parent only, so a module-level router cannot serve two bots: a module that
several bots share must expose a factory function, called for each bot when its
Dispatcher is built (and twice at start, to check it builds a new Router each
time). And import errors in user code are the most common way a deployment
breaks, so each one is reported with the spec, the exception, and the file and
line that raised it.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import sys
import traceback
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeGuard, cast

from aiogram import BaseMiddleware, Dispatcher, Router

from botyard.errors import BotyardError
from botyard.registry.models import BotConfig, Loc, RegistryError, format_loc

__all__ = [
    "BotMiddleware",
    "BotRouters",
    "Locator",
    "RouterBuildError",
    "RouterResolver",
    "middleware_events",
    "resolve_callable",
    "resolve_middlewares",
    "resolve_routers",
]

Locator = Callable[[BotConfig, Loc], str]
"""Where a bot's key is, for error messages: ``(bot, ("routers", 0))`` -> ``"file:12: ..."``."""


def _default_locator(bot: BotConfig, loc: Loc) -> str:
    return f"bot {bot.name!r} {format_loc(loc)}"


_IMPORTLIB = Path(importlib.__file__).parent


class _SpecError(BotyardError):
    """A spec that cannot be turned into the object it names; the message says why."""


class RouterBuildError(BotyardError):
    """A factory failed when a Dispatcher was built, though it worked at start."""


def resolve_routers(
    bot: BotConfig, base_dir: Path, *, locate: Locator = _default_locator
) -> BotRouters:
    """Import the bot's routers and check them, calling each factory to see what it builds.

    Raises :class:`RegistryError` listing every router of the bot that failed.
    Does not check sharing between bots; :class:`RouterResolver` does.
    """
    return RouterResolver(base_dir, locate=locate).resolve(bot)


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
class BotMiddleware:
    """One middleware the registry names for a bot, and how to make it for a Dispatcher."""

    spec: str
    event: str
    scope: Literal["outer", "inner"]
    make: Callable[[], Any]

    def register(self, dispatcher: Dispatcher) -> None:
        observer = dispatcher.observers[self.event]
        manager = observer.outer_middleware if self.scope == "outer" else observer.middleware
        manager.register(self.make())


@functools.cache
def middleware_events() -> frozenset[str]:
    """The event observers a middleware may be registered on (``update`` and each type)."""
    return frozenset(Router().observers) - {"error"} | {"update"}


def resolve_middlewares(
    bot: BotConfig, base_dir: Path, *, locate: Locator = _default_locator
) -> tuple[BotMiddleware, ...]:
    """Import the bot's middlewares; :class:`RegistryError` naming each unusable one.

    An instance (a ``BaseMiddleware``, or an async function taking handler,
    event and data) serves every Dispatcher; a class or another callable is a
    factory, called once here to check it makes a middleware, then once per
    Dispatcher.
    """
    found: list[BotMiddleware] = []
    problems: list[str] = []
    for index, config in enumerate(bot.middlewares):
        events = middleware_events()
        if config.event not in events:
            problems.append(
                f"{locate(bot, ('middlewares', index, 'event'))}: unknown event "
                f"{config.event!r}; expected update or one of {', '.join(sorted(events))}"
            )
            continue
        try:
            make = _middleware_maker(config.middleware, base_dir)
        except _SpecError as error:
            problems.append(f"{locate(bot, ('middlewares', index))}: {error}")
            continue
        found.append(BotMiddleware(config.middleware, config.event, config.scope, make))
    if problems:
        raise RegistryError(problems)
    return tuple(found)


def _middleware_maker(spec: str, base_dir: Path) -> Callable[[], Any]:
    found = _import_object(spec, base_dir)
    if _is_middleware(found):
        return lambda: found
    if not callable(found):
        raise _SpecError(f"{spec} is {_describe(found)}, expected a middleware or a factory")
    try:
        made = found()
    except Exception as error:
        raise _SpecError(f"{spec}() failed: {_exception(error, base_dir)}") from None
    if not _is_middleware(made):
        raise _SpecError(
            f"{spec}() returned {_describe(made)}, expected a BaseMiddleware or an async "
            "function (handler, event, data)"
        )
    return cast(Callable[[], Any], found)


def _is_middleware(found: object) -> bool:
    if isinstance(found, BaseMiddleware):
        return True
    if not _is_async_callable(found):
        return False
    try:
        return len(inspect.signature(found).parameters) == 3
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class _Entry:
    """One item of a bot's ``routers:``: a Router object, or a factory called per build."""

    spec: str
    index: int
    router: Router | None = None
    factory: Callable[[], Any] | None = None

    def build(self) -> Router:
        if self.factory is None:
            assert self.router is not None
            return self.router
        return _call_factory(self.spec, self.factory)


@dataclass(frozen=True)
class _Probe:
    """What building one router showed, valid for every later build of it."""

    used_update_types: frozenset[str]
    lifecycle_hooks: bool

    @classmethod
    def of(cls, router: Router) -> _Probe:
        return cls(
            frozenset(router.resolve_used_update_types()),
            any(r.startup.handlers or r.shutdown.handlers for r in router.chain_tail),
        )


class BotRouters:
    """One bot's routers, built when its Dispatcher is, with what must be known earlier.

    Building aiogram routers is most of what an idle bot costs: every Router
    makes an observer per update type, each inspecting a callback's signature,
    about 40 KB and 1 ms per Router. So a runner builds its bot's routers on
    the first update. What is needed before that (the update types to ask
    Telegram for, and whether startup or shutdown handlers must run at start)
    comes from a probe build of each spec, made once per process.
    """

    def __init__(
        self,
        entries: list[_Entry],
        probes: list[_Probe],
        middlewares: Sequence[BotMiddleware] = (),
    ) -> None:
        self._entries = entries
        #: The registry's middlewares for the bot, registered on each new Dispatcher.
        self.middlewares = tuple(middlewares)
        self.used_update_types = sorted({name for p in probes for name in p.used_update_types})
        #: Some router has startup or shutdown handlers: build at start, so they run then.
        self.lifecycle_hooks = any(probe.lifecycle_hooks for probe in probes)

    @classmethod
    def of(cls, *routers: Router) -> BotRouters:
        """Routers already built (tests, embedding): each build hands out these objects."""
        entries = [_Entry(repr(r), index, router=r) for index, r in enumerate(routers)]
        return cls(entries, [_Probe.of(router) for router in routers])

    def build(self) -> list[Router]:
        """The routers to include in a new Dispatcher: fresh ones from every factory.

        Raises :class:`RouterBuildError` if a factory fails now although it
        worked when the registry was loaded.
        """
        try:
            return [entry.build() for entry in self._entries]
        except _SpecError as error:
            raise RouterBuildError(str(error)) from None

    def install_middlewares(self, dispatcher: Dispatcher) -> None:
        """Register the bot's middlewares on a new Dispatcher, in registry order."""
        for middleware in self.middlewares:
            middleware.register(dispatcher)


class RouterResolver:
    """Resolves each bot's router specs to routers, and never hands the same Router object
    to two bots of one process.

    A factory spec is imported and probed once, however many bots list it. For a
    Router object listed by two bots, aiogram would raise when the second
    Dispatcher includes it, after the first bot is already running; here the
    conflict is reported up front, with both bots named. Call :meth:`release`
    when a bot stops for good, so a restarted bot may take fresh routers.
    """

    def __init__(self, base_dir: Path, *, locate: Locator = _default_locator) -> None:
        self.base_dir = base_dir
        self._locate = locate
        self._owners: dict[int, tuple[str, _Entry]] = {}
        #: Per spec: a factory is probed once, not once per bot.
        self._probes: dict[str, _Probe] = {}
        #: Per spec: a factory, imported and its signature checked once, not once per bot.
        self._factories: dict[str, Callable[[], Any]] = {}

    def resolve(self, bot: BotConfig) -> BotRouters:
        """The routers for ``bot``; :class:`RegistryError` if any is unusable or taken."""
        entries, probes = _resolve_entries(
            bot, self.base_dir, self._locate, self._probes, self._factories
        )
        problems: list[str] = []
        try:
            middlewares = resolve_middlewares(bot, self.base_dir, locate=self._locate)
        except RegistryError as error:
            problems.extend(error.problems)
        objects = [entry for entry in entries if entry.router is not None]
        for entry in objects:
            owner = self._owners.get(id(entry.router))
            if owner and owner[0] != bot.name:
                problems.append(
                    f"{self._locate(bot, ('routers', entry.index))}: "
                    f"{_shared_message(entry, owner[0], owner[1], bot.name)}"
                )
        if problems:
            raise RegistryError(problems)
        for entry in objects:
            self._owners[id(entry.router)] = (bot.name, entry)
        return BotRouters(entries, probes, middlewares)

    def resolve_all(self, bots: Iterable[BotConfig]) -> dict[str, BotRouters]:
        """Routers for several bots, reporting the problems of all of them at once."""
        routers: dict[str, BotRouters] = {}
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
    return (
        f"router {entry.spec} is a Router object and is listed for bots {first_bot!r} and "
        f"{bot_name!r}; aiogram routers attach to one Dispatcher only: expose a factory "
        "function instead"
        + ("" if first.spec == entry.spec else f" (bot {first_bot!r} lists it as {first.spec})")
    )


def _resolve_entries(
    bot: BotConfig,
    base_dir: Path,
    locate: Locator,
    probes: dict[str, _Probe],
    factories: dict[str, Callable[[], Any]],
) -> tuple[list[_Entry], list[_Probe]]:
    entries: list[_Entry] = []
    found: list[_Probe] = []
    problems: list[str] = []
    seen: dict[int, str] = {}
    for index, spec in enumerate(bot.routers):
        try:
            known = factories.get(spec)
            entry = (
                _router_entry(spec, index, base_dir)
                if known is None
                else _Entry(spec, index, factory=known)
            )
            if entry.router is not None:
                if id(entry.router) in seen:
                    raise _SpecError(
                        f"{spec} is the same Router as {seen[id(entry.router)]}, "
                        "listed twice for this bot"
                    )
                seen[id(entry.router)] = spec
            probe = probes.get(spec) or _probe(entry)
        except _SpecError as error:
            problems.append(f"{locate(bot, ('routers', index))}: {error}")
            continue
        probes[spec] = probe
        if entry.factory is not None:
            factories[spec] = entry.factory
        entries.append(entry)
        found.append(probe)
    if problems:
        raise RegistryError(problems)
    return entries, found


def _probe(entry: _Entry) -> _Probe:
    """Build ``entry`` once; a factory twice: it must return a new, unattached Router."""
    router = entry.build()
    if entry.factory is not None:
        _check_unattached(entry.spec, router)
        if entry.build() is router:
            raise _SpecError(
                f"factory {entry.spec} returned the same Router on two calls; "
                "a factory must build a new Router on every call"
            )
    return _Probe.of(router)


def _router_entry(spec: str, index: int, base_dir: Path) -> _Entry:
    found = _import_object(spec, base_dir)
    if isinstance(found, Router):
        _check_unattached(spec, found)
        return _Entry(spec, index, router=found)
    if not callable(found):
        raise _SpecError(
            f"{spec} is {_describe(found)}; expected an aiogram Router or a function returning one"
        )
    if inspect.iscoroutinefunction(found):
        raise _SpecError(f"{spec} is an async function; a router factory must be a plain def")
    try:
        inspect.signature(found).bind()
    except TypeError:
        raise _SpecError(f"{spec} is a factory that needs arguments; it must take none") from None
    except ValueError:  # no signature available (some builtins): just try the call
        pass
    return _Entry(spec, index, factory=found)


def _check_unattached(spec: str, router: Router) -> None:
    if router.parent_router is not None:
        raise _SpecError(
            f"{spec} is already included in router {router.parent_router.name!r}; list that "
            "router instead, or expose a factory that builds a new one"
        )


def _call_factory(spec: str, factory: Callable[[], Any]) -> Router:
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
