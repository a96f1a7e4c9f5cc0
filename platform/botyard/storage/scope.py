"""The update scope: read each FSM record once per update, write it once.

aiogram's FSM middleware reads the state on every update, and a wizard step then
calls ``update_data`` and ``set_state``: three round trips with aiogram's own
MongoDB storage. Inside an :func:`update_scope`, :class:`BeanieStorage` reads a
record at most once, answers later reads from memory (including the update's
own writes), and sends all of the update's writes in one round trip when the
scope ends — also when the handler raised, so writes made before the error are
kept, as with aiogram's storages.

botyard's runner opens the scope itself (:meth:`UpdateScope.buffering`) and
decides at the end: a handled update's writes are flushed, retried as a flush
when MongoDB is unreachable (the handler, which has already replied, is not run
again); an update that will be handled again has its writes discarded, so the
re-run starts from the state before the update.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from aiogram import BaseMiddleware, Bot
from aiogram.fsm.middleware import FSMContextMiddleware
from aiogram.fsm.storage.base import BaseEventIsolation, StorageKey
from aiogram.types import TelegramObject

if TYPE_CHECKING:
    from botyard.storage.beanie_storage import BeanieStorage


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset()


@dataclass
class PendingRecord:
    """What one update read from, and wants to write to, one FSM record."""

    loaded: bool = False
    stored_state: str | None = None
    stored_data: dict[str, Any] = field(default_factory=dict)
    stored_updated_at: datetime | None = None
    stored_expires_at: datetime | None = None
    new_state: str | _Unset | None = UNSET
    #: A full replacement of the data (``set_data``), or ``None``.
    new_data: dict[str, Any] | None = None
    #: Keys merged on top of the stored (or replaced) data (``update_data``).
    data_patch: dict[str, Any] = field(default_factory=dict)

    @property
    def exists(self) -> bool:
        return self.stored_updated_at is not None

    @property
    def dirty(self) -> bool:
        return self.new_state is not UNSET or self.new_data is not None or bool(self.data_patch)

    @property
    def knows_state(self) -> bool:
        return self.loaded or self.new_state is not UNSET

    @property
    def knows_data(self) -> bool:
        return self.loaded or self.new_data is not None

    @property
    def state(self) -> str | None:
        return self.stored_state if isinstance(self.new_state, _Unset) else self.new_state

    @property
    def data(self) -> dict[str, Any]:
        return copy.deepcopy(self.data_with())

    def data_with(self, patch: dict[str, Any] | None = None) -> dict[str, Any]:
        """The data as it stands, with ``patch`` merged on top (shared, not copied)."""
        base = self.stored_data if self.new_data is None else self.new_data
        return {**base, **self.data_patch, **(patch or {})}

    def set_state(self, state: str | None) -> None:
        self.new_state = state

    def set_data(self, data: dict[str, Any]) -> None:
        self.new_data = copy.deepcopy(data)
        self.data_patch = {}

    def update_data(self, data: dict[str, Any]) -> None:
        if self.new_data is not None:
            self.new_data.update(copy.deepcopy(data))
        else:
            self.data_patch.update(copy.deepcopy(data))

    def load(self, document: dict[str, Any] | None) -> None:
        self.loaded = True
        if document is None:
            return
        self.stored_state = document.get("state")
        self.stored_data = document.get("data") or {}
        self.stored_updated_at = document.get("updated_at")
        self.stored_expires_at = document.get("expires_at")


class UpdateScope:
    """The FSM records one update touched, keyed by storage and aiogram key."""

    def __init__(self) -> None:
        self.closed = False
        self._records: dict[tuple[BeanieStorage, StorageKey], PendingRecord] = {}

    def record(self, storage: BeanieStorage, key: StorageKey) -> PendingRecord:
        return self._records.setdefault((storage, key), PendingRecord())

    @contextmanager
    def buffering(self) -> Iterator[UpdateScope]:
        """Be the running update's scope for the block; the block's end writes nothing.

        The owner then calls :meth:`flush` or :meth:`discard`. Once the block
        ended, tasks the handler spawned write straight through.
        """
        token = _current_scope.set(self)
        try:
            yield self
        finally:
            _current_scope.reset(token)
            self.closed = True

    async def flush(self) -> None:
        """Write every touched record: one round trip per storage in the common case.

        The records are kept until every write succeeded, so a failed flush can
        be called again; the writes set values (no increments), so writing
        twice what landed once leaves the same records.
        """
        by_storage: dict[BeanieStorage, dict[StorageKey, PendingRecord]] = {}
        for (storage, key), record in self._records.items():
            by_storage.setdefault(storage, {})[key] = record
        for storage, records in by_storage.items():
            await storage.write_records(records)
        self._records.clear()

    def discard(self) -> None:
        """Forget the update's writes: it will be handled again from the stored state."""
        self._records.clear()


_current_scope: ContextVar[UpdateScope | None] = ContextVar("botyard_update_scope", default=None)


def current_scope() -> UpdateScope | None:
    """The open scope of the running update, if any."""
    scope = _current_scope.get()
    return None if scope is None or scope.closed else scope


@asynccontextmanager
async def update_scope() -> AsyncIterator[UpdateScope]:
    """Buffer FSM reads and writes until the block ends, then write them at once.

    A scope opened inside another joins it. Tasks a handler spawns inherit the
    scope; once it has closed they write straight through, so nothing is lost.
    """
    outer = current_scope()
    if outer is not None:
        yield outer
        return
    scope = UpdateScope()
    try:
        with scope.buffering():
            yield scope
    finally:
        await scope.flush()


@dataclass
class _HeldLock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class KeyedLocks(BaseEventIsolation):
    """aiogram events isolation: one lock per storage key, dropped when nobody needs it.

    aiogram's ``SimpleEventIsolation`` keeps a lock for every key it ever saw.
    """

    def __init__(self) -> None:
        self._held: dict[StorageKey, _HeldLock] = {}

    @asynccontextmanager
    async def lock(self, key: StorageKey) -> AsyncIterator[None]:
        held = self._held.setdefault(key, _HeldLock())
        held.users += 1
        try:
            async with held.lock:
                yield
        finally:
            held.users -= 1
            if not held.users:
                del self._held[key]

    async def close(self) -> None:
        self._held.clear()


class UpdateScopeMiddleware(BaseMiddleware):
    """Outer update middleware that runs each update inside an :func:`update_scope`.

    It must run before aiogram's ``FSMContextMiddleware``, whose state read is
    then the scope's one read: use :meth:`BeanieStorage.install`. Given the
    dispatcher's FSM middleware and an events isolation, it holds the update's
    key locked until the scope's writes are stored, so the conversation's next
    update reads what this one wrote.
    """

    def __init__(
        self,
        fsm: FSMContextMiddleware | None = None,
        isolation: BaseEventIsolation | None = None,
    ) -> None:
        self._fsm = fsm
        self._isolation = isolation

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        bot = data.get("bot")
        context = (
            self._fsm.resolve_event_context(bot, data)
            if self._fsm is not None and self._isolation is not None and isinstance(bot, Bot)
            else None
        )
        if context is None or self._isolation is None:
            async with update_scope():
                return await handler(event, data)
        async with self._isolation.lock(context.key), update_scope():
            return await handler(event, data)
