"""MongoDB FSM storage for aiogram, namespaced per bot (Beanie models, PyMongo async)."""

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
