"""A Telegram Bot API emulator for testing bots without Telegram.

Real aiogram bots talk to it over HTTP (``TelegramAPIServer.from_base(emulator.url)``);
tests play the users through :class:`BotAPIEmulator` (async),
:class:`EmulatorThread` (sync) or the HTTP control API under ``/_emulator``.
pytest fixtures live in :mod:`botyard.emulator.pytest_plugin`.
"""

from botyard.emulator.emulator import BotAPIEmulator
from botyard.emulator.errors import (
    BotAPIError,
    ControlError,
    EmulatorStoppedError,
    UnknownBotError,
)
from botyard.emulator.events import EmulatorEvent, Subscription
from botyard.emulator.faults import Fault, FloodLimits
from botyard.emulator.state import DeliveryAttempt, EmulatedBot, SimulatedUser
from botyard.emulator.thread import EmulatorThread

__all__ = [
    "BotAPIEmulator",
    "BotAPIError",
    "ControlError",
    "DeliveryAttempt",
    "EmulatedBot",
    "EmulatorEvent",
    "EmulatorStoppedError",
    "EmulatorThread",
    "Fault",
    "FloodLimits",
    "SimulatedUser",
    "Subscription",
    "UnknownBotError",
]
