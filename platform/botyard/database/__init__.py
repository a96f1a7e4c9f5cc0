"""Where the platform's MongoDB is, and the one client botyard builds for it.

Owns the registry's URI or an embedded development server
(:mod:`.location`, :mod:`.embedded`), the client factory with its timeouts
(:mod:`.client`), the document type and clock all MongoDB code shares
(:mod:`.documents`), database errors (:mod:`.errors`) and counting round trips
(:mod:`.roundtrips`). Imports nothing of botyard but the registry models and
:mod:`botyard.errors`.
"""
