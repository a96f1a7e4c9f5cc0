"""aiogram's pydantic models built when first used, not all while aiogram imports.

``aiogram.types`` ends by calling ``model_rebuild(_types_namespace=...)`` on each of its
models (about 450), whose annotations name one another under ``TYPE_CHECKING``. Each
rebuild generates the schema of every model it reaches that is not built yet, so the
models of one reference cycle (``Message``, ``Chat``, ``User`` and most others) are
generated again and again; then each of the 170 ``aiogram.methods`` builds its schema as
its class is made. Together 3.5 to 7 s of CPU in every process that imports aiogram, the
largest part of the start of ``botyard run``, although a bot uses a few dozen of them.

:func:`defer_aiogram_model_builds` lets that import skip the types' rebuilds and leaves
each type resolved but unbuilt: its fields are resolved at once with the namespace
aiogram passed (annotations only, a small part of the cost; a subclass copies them),
that namespace becomes its ``__pydantic_parent_namespace__`` (where pydantic resolves a
model it builds on first use) and the names go into its module (where pydantic looks
when it generates a model's schema inside another's, such as ``Response[list[Update]]``).
That is what aiogram's loop resolved, so every type ends up with the same fields and
schema (a test compares them with an eager import's). The types were declared with
``defer_build=True`` by aiogram, only its loop built them early; the methods get the
same setting from their base class before they are made. Should pydantic's internals
used here change, the types are rebuilt as aiogram rebuilds them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from importlib.abc import Loader
from importlib.machinery import ModuleSpec, PathFinder
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import BaseModel

__all__ = ["defer_aiogram_model_builds"]

_TYPES = "aiogram.types"
_METHODS_BASE = "aiogram.methods.base"

Preparation = Callable[[ModuleType], AbstractContextManager[None]]


def defer_aiogram_model_builds() -> None:
    """Make the coming import of aiogram leave its models to be built on first use.

    Does nothing once aiogram is imported, or when this is already arranged.
    """
    if "aiogram" in sys.modules or any(isinstance(f, _ModelsFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _ModelsFinder())


@contextmanager
def _types_rebuilt_later(module: ModuleType) -> Iterator[None]:
    from pydantic import BaseModel

    rebuild = BaseModel.__dict__["model_rebuild"]
    deferred: list[type[BaseModel]] = []
    namespace: dict[str, Any] = {}

    def defer(
        cls: type[BaseModel], *args: Any, _types_namespace: Any = None, **kwargs: Any
    ) -> bool | None:
        if _types_namespace is None or not cls.__module__.startswith(_TYPES + "."):
            return rebuild.__func__(cls, *args, _types_namespace=_types_namespace, **kwargs)  # type: ignore[no-any-return]
        deferred.append(cls)
        namespace.update(_types_namespace)
        return None

    BaseModel.model_rebuild = classmethod(defer)  # type: ignore[method-assign,assignment,arg-type]
    try:
        yield
    finally:
        BaseModel.model_rebuild = rebuild  # type: ignore[method-assign]
    if not deferred:
        return
    try:
        _resolve_fields(deferred, namespace)
    except Exception:  # a pydantic this was not written for (tests say so): aiogram's way
        for model in deferred:
            rebuild.__func__(model, _types_namespace=namespace)


def _resolve_fields(models: list[type[BaseModel]], namespace: dict[str, Any]) -> None:
    """Leave ``models`` resolved (names and fields) but unbuilt (no schema, validator, serializer).

    A subclass copies its base's fields: unresolved, it would resolve them in its own module.
    """
    from pydantic._internal._config import ConfigWrapper
    from pydantic._internal._fields import rebuild_model_fields
    from pydantic._internal._namespace_utils import NsResolver

    resolver = NsResolver(parent_namespace=namespace)
    for model in models:
        model.__pydantic_parent_namespace__ = namespace
        module_namespace = sys.modules[model.__module__].__dict__
        for name, value in namespace.items():
            module_namespace.setdefault(name, value)
        model.__pydantic_fields__, model.__pydantic_extra_info__ = rebuild_model_fields(
            model,
            config_wrapper=ConfigWrapper(model.model_config, check=False),
            ns_resolver=resolver,
            typevars_map={},
        )


@contextmanager
def _methods_built_later(module: ModuleType) -> Iterator[None]:
    yield
    module.TelegramMethod.model_config["defer_build"] = True  # read by each method as it is made


class _ModelsFinder:
    """Finds the two modules once each, to wrap their loaders; then steps aside."""

    def __init__(self) -> None:
        self._pending: dict[str, Preparation] = {
            _TYPES: _types_rebuilt_later,
            _METHODS_BASE: _methods_built_later,
        }

    def find_spec(
        self, fullname: str, path: Any = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        preparation = self._pending.pop(fullname, None)
        if preparation is None:
            return None
        if not self._pending:
            sys.meta_path.remove(self)
        spec = PathFinder.find_spec(fullname, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _PreparingLoader(spec.loader, preparation)
        return spec


class _PreparingLoader(Loader):
    def __init__(self, loader: Loader, preparation: Preparation) -> None:
        self._loader = loader
        self._preparation = preparation

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with self._preparation(module):
            self._loader.exec_module(module)
