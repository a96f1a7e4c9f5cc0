"""Magic filters (``F.text``, ``F.data == "go"``) evaluated on the event loop.

aiogram awaits a filter that is a coroutine function or a :class:`Filter`, and
runs every other callable through :func:`asyncio.to_thread`, in case it blocks.
A magic filter is such a callable (its ``resolve`` method), so each
``F.text`` check of every update was a round trip through the thread pool:
about 4% of botyard's CPU per update under load. Resolving a magic filter runs
only the library's own operations on the event (attribute and item access,
comparisons, ``in_``, ``len``, ``regexp``, ``as_``, methods of the event's
values), which never block, so those filters are resolved inline.

A magic filter that calls code of the bot's own (``.func(check)``,
``.cast(parse)``) keeps aiogram's thread: that code may block. So do plain
synchronous filter functions. Async filters and :class:`Filter` objects were
awaited inline already; magic filters inside them (``and_f``, ``or_f``,
``~``) are resolved inline like the others.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from aiogram import Router
from aiogram.dispatcher.event.handler import FilterObject
from aiogram.filters import Filter
from magic_filter import MagicFilter

__all__ = ["resolve_magic_filters_inline"]

#: Modules whose functions a magic filter may call inline: the library's, Python's own.
_LIBRARY_MODULES = ("builtins", "operator", "_operator", "re", "magic_filter", "aiogram")


def resolve_magic_filters_inline(router: Router) -> None:
    """Resolve the magic filters of ``router`` and every router below it on the event loop.

    Call it once the routers are complete; running it again changes nothing.
    """
    for member in router.chain_tail:
        for observer in member.observers.values():
            # The observer's own filters (``router.message.filter(...)``) sit on its _handler.
            handlers = [observer._handler, *observer.handlers]
            for handler in handlers:
                for filter_object in handler.filters or ():
                    _inline(filter_object)


def _inline(filter_object: FilterObject) -> None:
    magic = filter_object.magic
    if magic is not None:
        if not filter_object.awaitable and not _calls_bot_code(magic):
            filter_object.callback = _resolving(magic)
            filter_object.awaitable = True
        return
    if isinstance(filter_object.callback, Filter):
        for inner in _filter_objects(_attributes(filter_object.callback)):
            _inline(inner)


def _resolving(magic: MagicFilter) -> Any:
    resolve = magic.resolve

    async def resolved(*args: Any, **kwargs: Any) -> Any:
        return resolve(*args, **kwargs)

    return resolved


def _calls_bot_code(magic: MagicFilter) -> bool:
    """Whether resolving ``magic`` may call a function that is not the library's or Python's."""
    for operation in magic._operations:
        for value in _attributes(operation):
            if _is_bot_code(value):
                return True
    return False


def _is_bot_code(value: object) -> bool:
    if isinstance(value, MagicFilter):
        return _calls_bot_code(value)
    if isinstance(value, (tuple, list, set, frozenset)):
        return any(_is_bot_code(item) for item in value)
    if isinstance(value, dict):
        return any(_is_bot_code(item) for item in value.values())
    if not callable(value):
        return False
    # A function names its module; a method of a built-in type (str.lower) or of
    # a built-in object (a compiled pattern's match) names its type's.
    owner = getattr(value, "__objclass__", None)
    if owner is None and hasattr(value, "__self__"):
        owner = type(value.__self__)
    module = getattr(value, "__module__", None) or getattr(owner, "__module__", None)
    return not (isinstance(module, str) and module.split(".")[0] in _LIBRARY_MODULES)


def _attributes(instance: object) -> Iterator[object]:
    """The values ``instance`` holds, in ``__slots__`` or its ``__dict__``."""
    for cls in type(instance).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if hasattr(instance, name):
                yield getattr(instance, name)
    yield from getattr(instance, "__dict__", {}).values()


def _filter_objects(values: Iterable[object]) -> Iterator[FilterObject]:
    for value in values:
        if isinstance(value, FilterObject):
            yield value
        elif isinstance(value, (tuple, list)):
            yield from (item for item in value if isinstance(item, FilterObject))
