"""pytest fixtures for the Bot API emulator.

Enable with ``pytest_plugins = ["botyard.emulator.pytest_plugin"]`` in the root
``conftest.py``, or import the fixtures into a test module. Webhook retries are
shortened so failure scenarios stay fast.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from botyard.emulator.emulator import BotAPIEmulator
from botyard.emulator.thread import EmulatorThread

RETRY_DELAY = 0.05
MAX_RETRY_DELAY = 0.2


@pytest_asyncio.fixture
async def bot_api() -> AsyncIterator[BotAPIEmulator]:
    """A started emulator on a free loopback port, on the test's event loop."""
    async with BotAPIEmulator(
        webhook_retry_delay=RETRY_DELAY, webhook_max_retry_delay=MAX_RETRY_DELAY
    ) as emulator:
        yield emulator


@pytest.fixture
def bot_api_thread() -> Iterator[EmulatorThread]:
    """A started emulator in a background thread, for synchronous tests and subprocess bots."""
    with EmulatorThread(
        webhook_retry_delay=RETRY_DELAY, webhook_max_retry_delay=MAX_RETRY_DELAY
    ) as emulator:
        yield emulator
