"""Operating a running process: the HTTP server, health, metrics and the loop watchdog.

Owns ``/healthz`` and ``/readyz`` (:mod:`.health`), ``/metrics``
(:mod:`.metrics`), the one aiohttp server (:mod:`.http_server`) and the
event-loop watchdog (:mod:`.watchdog`). Reads the platform through the
read-only view the supervisor gives it; never imports the supervisor.
"""
