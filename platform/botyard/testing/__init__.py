"""The Bot API emulator under its first name: :mod:`botyard.emulator` is the package."""

from botyard.emulator import *  # noqa: F403
from botyard.emulator import __all__ as __all__
