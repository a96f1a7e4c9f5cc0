"""The README's examples work as written: its bot test runs in a project of its own."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def readme_section(title: str) -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def python_blocks(section: str) -> dict[str, str]:
    """The section's ```python blocks, by the file name their first line gives (``# name``)."""
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    return {block.split("\n", 1)[0].removeprefix("# ").strip(): block for block in blocks}


def test_the_bot_test_in_the_readme_passes(tmp_path: Path, mongo_uri: str) -> None:
    blocks = python_blocks(readme_section("Testing your own bots"))
    assert set(blocks) == {"conftest.py", "tests/test_questionnaire.py", "tests/test_flood.py"}
    for name, source in blocks.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(source, encoding="utf-8")
    shutil.copytree(REPO / "bots", tmp_path / "bots", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
        "pythonpath = .\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "MONGODB_URI": mongo_uri},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
