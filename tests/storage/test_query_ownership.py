"""Only ``botyard.storage`` queries FSM records: no other module knows their collection or key.

The checker reads every module's syntax tree; the tests below it prove that it
catches each way a module could query the records itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from botyard.storage.record import COLLECTION_NAME, KEY_FIELDS

PACKAGE = Path(__file__).resolve().parents[2] / "platform" / "botyard"
STORAGE = PACKAGE / "storage"

#: Names that exist to query the records: their collection, key, model and filters.
QUERY_NAMES = frozenset({"COLLECTION_NAME", "KEY_FIELDS", "FSMRecord", "record_filter"})
#: Fields of a record that, beside ``namespace``, make a dict a filter on FSM records.
RECORD_FIELDS = (frozenset(KEY_FIELDS) - {"namespace"}) | {
    "bot_id",
    "state",
    "data",
    "updated_at",
    "expires_at",
}


def fsm_queries(source: str, where: str) -> list[str]:
    """Where ``source`` reaches FSM records without :mod:`botyard.storage`'s public API."""
    tree = ast.parse(source)
    # The collection's name as a key of a dict of one's own (a JSON field) is no query.
    dict_keys = {
        id(key) for node in ast.walk(tree) if isinstance(node, ast.Dict) for key in node.keys
    }
    found: list[str] = []
    for node in ast.walk(tree):
        line = f"{where}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("botyard.storage"):
            names = {alias.name for alias in node.names} & QUERY_NAMES
            if names or node.module == "botyard.storage.record":
                found.append(f"{line}: imports {', '.join(sorted(names)) or node.module}")
        elif isinstance(node, ast.Attribute) and node.attr in QUERY_NAMES:
            found.append(f"{line}: uses .{node.attr}")
        elif (
            isinstance(node, ast.Constant)
            and node.value == COLLECTION_NAME
            and id(node) not in dict_keys
        ):
            found.append(f"{line}: names the collection {COLLECTION_NAME!r}")
        elif isinstance(node, ast.Dict) and _is_record_filter(node):
            found.append(f"{line}: builds a filter on FSM records")
    return found


def _is_record_filter(node: ast.Dict) -> bool:
    keys = {key.value for key in node.keys if isinstance(key, ast.Constant)}
    if "namespace" not in keys:
        return False
    if keys & RECORD_FIELDS:
        return True
    value = node.values[[getattr(key, "value", None) for key in node.keys].index("namespace")]
    return isinstance(value, ast.Dict)  # {"namespace": {"$in": [...]}}


def test_no_module_outside_storage_queries_fsm_records() -> None:
    modules = [path for path in PACKAGE.rglob("*.py") if STORAGE not in path.parents]
    assert len(modules) > 50, "the package was found"
    findings = [
        finding
        for path in modules
        for finding in fsm_queries(path.read_text(encoding="utf-8"), str(path.relative_to(PACKAGE)))
    ]
    assert findings == []


@pytest.mark.parametrize(
    "source",
    [
        "from botyard.storage import COLLECTION_NAME",
        "from botyard.storage import KEY_FIELDS as fields",
        "from botyard.storage.record import storage_key",
        "from botyard.storage import FSMRecord\nFSMRecord.find({})",
        "import botyard.storage\nbotyard.storage.record_filter('ns', key)",
        f"database[{COLLECTION_NAME!r}].find_one({{}})",
        f"database.get_collection({COLLECTION_NAME!r})",
        "collection.count_documents({'namespace': 'quiz', 'updated_at': {'$lte': now}})",
        "collection.delete_many({'namespace': 'quiz', 'chat_id': 1, 'user_id': 2})",
        "pipeline = [{'$match': {'namespace': {'$in': namespaces}}}]",
    ],
)
def test_the_checker_catches_a_query_outside_storage(source: str) -> None:
    assert len(fsm_queries(source, "bad.py")) >= 1


def test_the_checker_lets_the_public_api_and_unrelated_code_pass() -> None:
    source = f"""
from botyard.storage import BeanieStorage, update_scope
from botyard.storage.records import FSMRecords

async def view(database, namespace, key):
    counts = await FSMRecords(database).count_per_state([namespace])
    return {{{COLLECTION_NAME!r}: len(counts), "name": namespace}}
"""
    assert fsm_queries(source, "good.py") == []
