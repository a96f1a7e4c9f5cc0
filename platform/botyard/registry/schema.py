"""The registry file's JSON Schema, for ``botyard schema``, editors and CI validation."""

from __future__ import annotations

from typing import Any

from botyard.registry.models import RegistryDocument

__all__ = ["registry_json_schema"]


def registry_json_schema() -> dict[str, Any]:
    """JSON Schema of the registry file, for ``botyard schema`` and editor completion."""
    schema = RegistryDocument.model_json_schema()
    schema["title"] = "botyard registry"
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
