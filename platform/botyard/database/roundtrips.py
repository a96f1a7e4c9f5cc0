"""Count database round trips: botyard's headline performance figure."""

from __future__ import annotations

from collections import Counter

from pymongo import monitoring

#: Commands the driver sends for itself (handshakes, monitoring, sessions).
DRIVER_COMMANDS = frozenset(
    {
        "hello",
        "ismaster",
        "isMaster",
        "ping",
        "endSessions",
        "buildInfo",
        "buildinfo",
        "saslStart",
        "saslContinue",
        "killCursors",
    }
)


class RoundTripCounter(monitoring.CommandListener):
    """A PyMongo command listener counting the commands an application sends.

    Pass it in ``event_listeners=[counter]`` when creating the client. Driver
    housekeeping (handshakes, heartbeats, session cleanup) is not counted.
    """

    def __init__(self) -> None:
        self.commands: Counter[str] = Counter()
        self.failures = 0

    @property
    def total(self) -> int:
        return sum(self.commands.values())

    def reset(self) -> None:
        self.commands.clear()
        self.failures = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name not in DRIVER_COMMANDS:
            self.commands[event.command_name] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        if event.command_name not in DRIVER_COMMANDS:
            self.failures += 1
