"""MongoDB FSM storage for aiogram, namespaced per bot (Beanie models, PyMongo async).

Owns the FSM record (:mod:`.record`), aiogram's storage interface on it
(:class:`BeanieStorage`, with the update scope of :mod:`.scope` and the value
checks of :mod:`.bson_values`) and every other query on the records
(:class:`~botyard.storage.records.FSMRecords`, which the cleanup, the metrics,
``botyard states``, the sandbox and the importers call). Imports nothing of
botyard but :mod:`botyard.database`.
"""

from botyard.database.documents import utcnow
from botyard.storage.beanie_storage import BeanieStorage, prepare_database
from botyard.storage.bson_values import FSMDataError
from botyard.storage.record import COLLECTION_NAME, KEY_FIELDS, FSMRecord, record_filter
from botyard.storage.scope import UpdateScopeMiddleware, update_scope

__all__ = [
    "COLLECTION_NAME",
    "KEY_FIELDS",
    "BeanieStorage",
    "FSMDataError",
    "FSMRecord",
    "UpdateScopeMiddleware",
    "prepare_database",
    "record_filter",
    "update_scope",
    "utcnow",
]
