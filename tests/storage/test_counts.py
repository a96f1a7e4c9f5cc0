"""Records per bot and state, counted from the (namespace, state) index: the metrics' sample.

The plan is read with ``explain``: an index scan of ``fsm_ns_state``, never a
collection scan; on MongoDB a covered one (no document fetched). SecantusDB,
the default test server, fetches the document behind every index key (it has no
covered plans), so there the test holds it to the index scan alone.
"""

from __future__ import annotations

from typing import Any

from benchmarks.fsm_sampler import BOTS, STATES, measure

RECORDS = 1000


async def test_the_sample_counts_every_record_once_through_the_state_index(
    mongo_uri: str, database_name: str
) -> None:
    result: dict[str, Any] = await measure(mongo_uri, RECORDS, runs=1, database_name=database_name)
    assert (result["bots"], result["states"]) == (BOTS, len(STATES))
    assert result["index"] == "fsm_ns_state", result["plan"]
    assert "COLLSCAN" not in result["plan"]
    assert result["keys_examined"] == RECORDS, "one index key per record, nothing else"
    if result["server"] == "secantus":
        assert result["plan"].endswith("FETCH <- IXSCAN"), result["plan"]
    else:
        assert "FETCH" not in result["plan"], f"MongoDB covers the count: {result['plan']}"
        assert result["docs_examined"] == 0
