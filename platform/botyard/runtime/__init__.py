"""Running bots: the supervisor, one runner per bot, and what they share.

Owns the supervisor (:mod:`.supervisor`, which only supervises), a bot's life
(:mod:`.runner`), per-key ordering and offset confirmation (:mod:`.ordering`),
importing routers and hooks (:mod:`.routers`), the pooled aiogram HTTP sessions
(:mod:`.http_sessions`), pausing the garbage collector while bots start
(:mod:`.gc_pause`) and the read-only view of the platform the supervisor hands
to ops, cleanup and webhooks (:mod:`.view`). May import every other package
except :mod:`botyard.cli` and :mod:`botyard.sandbox`; the packages it runs
import only :mod:`.view`, :mod:`.runner` and :mod:`.routers` back, never the supervisor.
"""
