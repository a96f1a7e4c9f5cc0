"""MongoDB errors that say "send it again": elections and failovers of a replica set.

While a replica set elects a new primary, MongoDB fails writes with errors that
carry the ``RetryableWriteError`` label: on the error itself, or, for a bulk
write, on its write concern errors (``BulkWriteError`` wraps them). The driver
retries a single retryable write once; when that retry fails too, or for
``update_many``/``delete_many``, which it never retries, the error reaches
botyard. Such a write did not happen, or happened and can be repeated (every
botyard write is idempotent), so the update is handled again instead of being
confirmed with its FSM write lost. The test server never raises these; tests
inject them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pymongo.errors import BulkWriteError, PyMongoError

__all__ = ["RETRYABLE_WRITE_LABEL", "is_retryable_write_error"]

RETRYABLE_WRITE_LABEL = "RetryableWriteError"


def is_retryable_write_error(error: BaseException) -> bool:
    """Whether MongoDB marked ``error`` as a write that can be sent again."""
    if not isinstance(error, PyMongoError):
        return False
    if error.has_error_label(RETRYABLE_WRITE_LABEL):
        return True
    if isinstance(error, BulkWriteError):
        details: Mapping[str, Any] = error.details or {}
        return any(
            RETRYABLE_WRITE_LABEL in (concern.get("errorLabels") or ())
            for concern in details.get("writeConcernErrors") or ()
        )
    return False
