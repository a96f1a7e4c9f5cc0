"""The one error family: every error botyard raises on purpose is a :class:`BotyardError`.

Such an error is bad input, a missing resource or a refused operation, never a
bug: its message says what and where, and is meant to be shown as is, without
a traceback. The ``botyard`` commands print it as ``error: <message>`` and exit
with status 1 (:mod:`botyard.cli`); runtime code raises it and never decides
how it is shown. Subclasses keep a built-in base too (``ValueError``,
``OSError``...) where callers catch that.

Imports nothing from botyard: every package may import it.
"""

from __future__ import annotations

__all__ = ["BotyardError"]


class BotyardError(Exception):
    """An error botyard raises on purpose; its message is for the user, as is."""
