"""The emulator's pytest fixtures under their first name, ``botyard.testing.pytest_plugin``."""

from botyard.emulator.pytest_plugin import *  # noqa: F403
