"""Whether the server can run a migration inside a transaction.

Transactions need a replica set (a single node is enough) or a sharded cluster;
a standalone ``mongod`` refuses them. The server's ``hello`` reply tells which.
SecantusDB, the test and embedded server, reports itself as a replica set.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: MongoDB 4.0 (wire version 7) brought replica-set transactions, 4.2 (8) sharded ones.
_REPLICA_SET_WIRE_VERSION = 7
_SHARDED_WIRE_VERSION = 8


@dataclass(frozen=True)
class TransactionSupport:
    """The verdict, and the reason shown to the operator."""

    supported: bool
    reason: str


def transaction_support(hello: Mapping[str, Any]) -> TransactionSupport:
    """Read ``hello`` (the server's handshake reply) for transaction support."""
    wire = int(hello.get("maxWireVersion") or 0)
    sessions = hello.get("logicalSessionTimeoutMinutes") is not None
    if hello.get("msg") == "isdbgrid":
        if sessions and wire >= _SHARDED_WIRE_VERSION:
            return TransactionSupport(True, "the server is a sharded cluster (mongos)")
        return TransactionSupport(False, "the sharded cluster is older than MongoDB 4.2")
    name = hello.get("setName")
    if name:
        if sessions and wire >= _REPLICA_SET_WIRE_VERSION:
            return TransactionSupport(True, f"the server is a member of replica set {name!r}")
        return TransactionSupport(False, f"replica set {name!r} is older than MongoDB 4.0")
    return TransactionSupport(
        False,
        "the server is a standalone mongod, which has no transactions "
        "(run it as a single-node replica set to get them)",
    )
