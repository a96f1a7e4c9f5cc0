"""Errors MongoDB raises and the test server does not, injected into a collection.

A replica set in an election fails writes with ``RetryableWriteError``-labelled
errors, or commits a write and loses its acknowledgement; SecantusDB does
neither. :class:`Faulty` wraps a PyMongo collection so that one method raises
the error MongoDB would, before or after doing its real work.
"""

from __future__ import annotations

from typing import Any

from pymongo.errors import BulkWriteError, PyMongoError, WriteConcernError

RETRYABLE = ["RetryableWriteError"]


class Faulty:
    """``collection`` whose ``method`` raises ``error`` the next ``times`` calls.

    With ``after_write`` the real call runs first (the write committed, the
    reply was lost); otherwise nothing is written.
    """

    def __init__(
        self,
        collection: Any,
        method: str,
        error: PyMongoError,
        *,
        after_write: bool = False,
        times: int = 1,
    ) -> None:
        self._collection = collection
        self._method = method
        self._error = error
        self._after_write = after_write
        self.failures_left = times

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._collection, name)
        if name != self._method:
            return real

        async def failing(*args: Any, **kwargs: Any) -> Any:
            if not self.failures_left:
                return await real(*args, **kwargs)
            self.failures_left -= 1
            if self._after_write:
                await real(*args, **kwargs)
            raise self._error

        return failing


def bulk_write_error(
    *, write_errors: list[dict[str, Any]] | None = None, labels: list[str] | None = None
) -> BulkWriteError:
    """A ``BulkWriteError`` as PyMongo builds it from MongoDB's reply."""
    details: dict[str, Any] = {
        "writeErrors": write_errors or [],
        "writeConcernErrors": [],
        "nInserted": 0,
        "nUpserted": 0,
        "nMatched": 0,
        "nModified": 0,
        "nRemoved": 0,
        "upserted": [],
    }
    if labels:
        # A failover: the primary stepped down while the write waited for replication.
        details["writeConcernErrors"] = [
            {"code": 91, "errmsg": "Replication is being shut down", "errorLabels": labels}
        ]
    return BulkWriteError(details)


def duplicate_key(index: int = 0) -> dict[str, Any]:
    """The write error of an upsert that lost the race to insert (E11000)."""
    return {"index": index, "code": 11000, "errmsg": "E11000 duplicate key error"}


def write_concern_error(labels: list[str]) -> WriteConcernError:
    return WriteConcernError(
        "waiting for replication was interrupted", 11602, {"errorLabels": labels}
    )
