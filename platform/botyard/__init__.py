"""botyard: many aiogram bots in one process, FSM state in one shared MongoDB."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("botyard")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
