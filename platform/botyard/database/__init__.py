"""Where the platform's MongoDB is, and the one client botyard builds for it.

Owns the registry's URI or an embedded development server
(:mod:`.location`, :mod:`.embedded`) and counting round trips
(:mod:`.roundtrips`). Imports nothing of botyard but the registry models and
:mod:`botyard.errors`.
"""
