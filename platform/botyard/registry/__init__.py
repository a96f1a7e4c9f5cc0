"""The registry: what the YAML file may say, and turning a file into that.

Owns the pydantic models (:mod:`.models`), durations (:mod:`.durations`),
loading a file with ``${VAR}``/``.env`` substitution and ``botyard check``
(:mod:`.loader`), rendering its problems as ``file:line`` lines
(:mod:`.problems`), the reload diff (:mod:`.diff`) and the JSON Schema
(:mod:`.schema`). Everything downstream reads a validated
:class:`~botyard.registry.models.Registry` and never the file.
May import: :mod:`botyard.tokens`, :mod:`botyard.errors`, and user code named
by the file (through :mod:`botyard.runtime.routers`).
"""
