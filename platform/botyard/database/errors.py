"""The database cannot be used: one message naming the server (never its credentials)
and what to check, instead of the driver's traceback."""

from __future__ import annotations

from urllib.parse import urlsplit

from pymongo.errors import OperationFailure, PyMongoError

from botyard.errors import BotyardError

__all__ = ["DatabaseUnavailable"]

#: MongoDB's code for a failed authentication.
_AUTHENTICATION_FAILED = 18


class DatabaseUnavailable(BotyardError, ConnectionError):
    """MongoDB could not be reached or refused botyard at start."""

    @classmethod
    def of(cls, uri: str, error: PyMongoError) -> DatabaseUnavailable:
        where = f"MongoDB at {hosts_of(uri)}"
        if isinstance(error, OperationFailure) and error.code == _AUTHENTICATION_FAILED:
            return cls(
                f"{where} refused the credentials (authentication failed): check the user, "
                "the password and authSource in storage.uri"
            )
        if isinstance(error, OperationFailure):
            return cls(
                f"{where} refused to prepare the database ({type(error).__name__}, code "
                f"{error.code}): check that the user of storage.uri may read, write and "
                "create indexes in storage.database"
            )
        return cls(
            f"cannot reach {where} ({type(error).__name__}): check that it is running and "
            "reachable from this host, the host and port in storage.uri, and for a replica "
            "set its name (replicaSet=) and that its members' addresses resolve from here"
        )


def hosts_of(uri: str) -> str:
    """The ``host:port`` list of a MongoDB URI, without user, password or options."""
    netloc = urlsplit(uri).netloc
    return netloc.rpartition("@")[2] or "(no host)"
