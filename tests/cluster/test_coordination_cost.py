"""``python -m benchmarks.cluster`` at a small size: the writes per heartbeat do not grow with bots.

Timings are not asserted (the machine is shared); the command counts are.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_coordination_writes_do_not_depend_on_the_number_of_bots(mongo_uri: str) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.cluster",
            "--uri",
            mongo_uri,
            "--bots",
            "30,600",
            "--heartbeat",
            "0.5",
            "--failover",
            "3",
            "--window",
            "3",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert [result["bots"] for result in results] == [30, 600]
    for result in results:
        commands = result["commands"]
        heartbeats = commands["findAndModify"]
        assert heartbeats >= 3, "each replica wrote a heartbeat in the window"
        # per heartbeat interval: one heartbeat per replica, one lease renewal by the
        # leader; no claim written while nothing moves, whatever the number of bots
        assert commands.get("insert", 0) == 0
        assert commands.get("delete", 0) == 0
        assert commands.get("update", 0) <= heartbeats // 3 + 1
        assert result["failover_seconds"] > 0
