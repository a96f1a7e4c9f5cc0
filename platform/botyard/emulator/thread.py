"""Run the emulator on its own event loop in a daemon thread, for synchronous tests.

The emulator's state belongs to its loop, so every wrapper below runs the
call on that loop and waits for the result; the returned data are copies that
are safe to use from the calling thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from botyard.emulator.emulator import BotAPIEmulator
from botyard.emulator.faults import Fault, FloodLimits
from botyard.emulator.state import JSON, DeliveryAttempt, EmulatedBot, SimulatedUser

P = ParamSpec("P")
T = TypeVar("T")


class EmulatorThread:
    """A started :class:`BotAPIEmulator` driven from synchronous code.

    ``settings`` and ``flood_limits`` are :class:`BotAPIEmulator`'s keyword
    arguments. Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        flood_limits: FloodLimits | None = None,
        **settings: float,
    ) -> None:
        self.emulator = BotAPIEmulator(flood_limits=flood_limits, **settings)
        self._host = host
        self._port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> EmulatorThread:
        """Start the loop thread and the emulator; returns once it listens."""
        if self._thread is not None:
            raise RuntimeError("the emulator thread is already running")
        started: Future[None] = Future()
        self._thread = threading.Thread(
            target=self._serve, args=(started,), name="bot-api-emulator", daemon=True
        )
        self._thread.start()
        try:
            started.result(timeout)
        except BaseException:
            self._thread = None
            raise
        return self

    def _serve(self, started: Future[None]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self.emulator.start(self._host, self._port))
        except BaseException as exc:
            started.set_exception(exc)
            loop.close()
            return
        self._loop = loop
        started.set_result(None)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self.emulator.stop())
            loop.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the emulator and its loop, and wait for the thread to end."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        self._loop = None
        self._thread = None

    def __enter__(self) -> EmulatorThread:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _await(self, coroutine: Coroutine[Any, Any, T], timeout: float | None) -> T:
        if self._loop is None:
            coroutine.close()
            raise RuntimeError("the emulator thread is not running; call start() first")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def _call(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        async def on_loop() -> T:
            return function(*args, **kwargs)

        return self._await(on_loop(), timeout=30.0)

    @property
    def url(self) -> str:
        """Base URL for ``TelegramAPIServer.from_base``."""
        return self.emulator.url

    def add_bot(
        self,
        username: str | None = None,
        token: str | None = None,
        *,
        first_name: str | None = None,
    ) -> EmulatedBot:
        """See :meth:`BotAPIEmulator.add_bot`."""
        return self._call(self.emulator.add_bot, username, token, first_name=first_name)

    def revoke(self, token: str | int) -> None:
        """See :meth:`BotAPIEmulator.revoke`."""
        self._call(self.emulator.revoke, token)

    def user(
        self,
        user_id: int,
        first_name: str | None = None,
        username: str | None = None,
        *,
        last_name: str | None = None,
        language_code: str | None = None,
    ) -> SimulatedUser:
        """See :meth:`BotAPIEmulator.user`."""
        return self._call(
            self.emulator.user,
            user_id,
            first_name,
            username,
            last_name=last_name,
            language_code=language_code,
        )

    def send_message(
        self, token: str | int, user_id: int, text: str, chat_id: int | None = None
    ) -> JSON:
        """See :meth:`BotAPIEmulator.send_message`."""
        return self._call(self.emulator.send_message, token, user_id, text, chat_id)

    def press_button(
        self,
        token: str | int,
        user_id: int,
        message_id: int,
        callback_data: str,
        chat_id: int | None = None,
    ) -> JSON:
        """See :meth:`BotAPIEmulator.press_button`."""
        return self._call(
            self.emulator.press_button, token, user_id, message_id, callback_data, chat_id
        )

    def queue_raw_update(self, token: str | int, update_type: str, payload: JSON) -> JSON:
        """See :meth:`BotAPIEmulator.queue_raw_update`."""
        return self._call(self.emulator.queue_raw_update, token, update_type, payload)

    def sent_messages(self, token: str | int, chat_id: int | None = None) -> list[JSON]:
        """See :meth:`BotAPIEmulator.sent_messages`."""
        return self._call(self.emulator.sent_messages, token, chat_id)

    def wait_for_reply(
        self,
        token: str | int,
        chat_id: int,
        *,
        count: int = 1,
        timeout: float = 10.0,
        after_message_id: int | None = None,
        text: str | None = None,
    ) -> JSON | list[JSON]:
        """See :meth:`BotAPIEmulator.wait_for_reply`; one dict, or a list when ``count`` > 1."""
        waiting = self.emulator.wait_for_reply(
            token,
            chat_id,
            count=count,
            timeout=timeout,
            after_message_id=after_message_id,
            text=text,
        )
        return self._await(waiting, timeout=timeout + 5.0)

    def pending_updates(self, token: str | int) -> list[JSON]:
        """See :meth:`BotAPIEmulator.pending_updates`."""
        return self._call(self.emulator.pending_updates, token)

    def confirmed_offset(self, token: str | int) -> int:
        """See :meth:`BotAPIEmulator.confirmed_offset`."""
        return self._call(self.emulator.confirmed_offset, token)

    def conflicts(self, token: str | int) -> int:
        """See :meth:`BotAPIEmulator.conflicts`."""
        return self._call(self.emulator.conflicts, token)

    def calls(self, token: str | int, method: str) -> int:
        """See :meth:`BotAPIEmulator.calls`."""
        return self._call(self.emulator.calls, token, method)

    def webhook_info(self, token: str | int) -> JSON:
        """See :meth:`BotAPIEmulator.webhook_info`."""
        return self._call(self.emulator.webhook_info, token)

    def delivery_attempts(self, token: str | int) -> list[DeliveryAttempt]:
        """See :meth:`BotAPIEmulator.delivery_attempts`."""
        return self._call(self.emulator.delivery_attempts, token)

    def add_fault(self, kind: str, **rule: Any) -> Fault:
        """See :meth:`BotAPIEmulator.add_fault`; ``rule`` takes its keyword arguments."""
        return self._call(self.emulator.add_fault, kind, **rule)

    def remove_fault(self, fault: Fault | int) -> None:
        """See :meth:`BotAPIEmulator.remove_fault`."""
        self._call(self.emulator.remove_fault, fault)

    def clear_faults(self) -> None:
        """See :meth:`BotAPIEmulator.clear_faults`."""
        self._call(self.emulator.clear_faults)

    def enforce_flood_limits(self, limits: FloodLimits | None = None) -> FloodLimits:
        """See :meth:`BotAPIEmulator.enforce_flood_limits`."""
        return self._call(self.emulator.enforce_flood_limits, limits)

    def lift_flood_limits(self) -> None:
        """See :meth:`BotAPIEmulator.lift_flood_limits`."""
        self._call(self.emulator.lift_flood_limits)

    def fault_counts(self, token: str | int) -> JSON:
        """See :meth:`BotAPIEmulator.fault_counts`."""
        return self._call(self.emulator.fault_counts, token)
