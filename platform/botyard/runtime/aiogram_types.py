"""aiogram's Telegram types built when first used, not all while ``aiogram.types`` imports.

``aiogram.types`` ends by calling ``model_rebuild(_types_namespace=...)`` on each of its
pydantic models (about 400), whose annotations name one another under ``TYPE_CHECKING``.
Each rebuild generates the schema of every model it reaches that is not built yet, so the
models of one reference cycle (``Message``, ``Chat``, ``User`` and most others) are
generated again and again: 3.5 to 6 s of CPU in every process that imports aiogram, the
largest part of the start of ``botyard run``, although a bot uses a few dozen of them.

:func:`defer_aiogram_type_builds` lets that import skip the rebuilds and leaves each
model resolved but unbuilt: its fields are resolved at once with the namespace aiogram
passed (annotations only, a small part of the cost; a subclass copies them), that
namespace becomes its ``__pydantic_parent_namespace__`` (where pydantic resolves a model
it builds on first use) and the names go into its module (where pydantic looks when it
generates a model's schema inside another's, such as ``Response[list[Update]]``). That is
what aiogram's loop resolved, so every model ends up with the same fields and schema (a
test compares them with an eager import's). The models were declared with
``defer_build=True`` by aiogram; only its loop built them early. Should pydantic's
internals used here change, the loop's rebuilds are done as aiogram does them.
"""

from __future__ import annotations

import sys
from importlib.abc import Loader
from importlib.machinery import ModuleSpec, PathFinder
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import BaseModel

__all__ = ["defer_aiogram_type_builds"]

_PACKAGE = "aiogram.types"


def defer_aiogram_type_builds() -> None:
    """Make the coming import of ``aiogram.types`` leave its models to be built on first use.

    Does nothing when ``aiogram.types`` is already imported or this is already arranged.
    """
    if _PACKAGE in sys.modules or any(isinstance(f, _TypesFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _TypesFinder())


class _TypesFinder:
    """Finds ``aiogram.types`` once, to wrap its loader; then steps aside."""

    def find_spec(
        self, fullname: str, path: Any = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname != _PACKAGE:
            return None
        sys.meta_path.remove(self)
        spec = PathFinder.find_spec(fullname, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _DeferringLoader(spec.loader)
        return spec


class _DeferringLoader(Loader):
    def __init__(self, loader: Loader) -> None:
        self._loader = loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        from pydantic import BaseModel

        rebuild = BaseModel.__dict__["model_rebuild"]
        deferred: list[type[BaseModel]] = []
        namespace: dict[str, Any] = {}

        def defer(
            cls: type[BaseModel], *args: Any, _types_namespace: Any = None, **kwargs: Any
        ) -> bool | None:
            if _types_namespace is None or not cls.__module__.startswith(_PACKAGE + "."):
                return rebuild.__func__(cls, *args, _types_namespace=_types_namespace, **kwargs)  # type: ignore[no-any-return]
            deferred.append(cls)
            namespace.update(_types_namespace)
            return None

        BaseModel.model_rebuild = classmethod(defer)  # type: ignore[method-assign,assignment,arg-type]
        try:
            self._loader.exec_module(module)
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
