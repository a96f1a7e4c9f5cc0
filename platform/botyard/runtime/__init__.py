"""Running bots: the supervisor, one runner per bot, and what they share.

Owns the supervisor (:mod:`.supervisor`, which only supervises), a bot's life
(:mod:`.runner`), per-key ordering and offset confirmation (:mod:`.ordering`),
importing routers and hooks (:mod:`.routers`), the pooled aiogram HTTP sessions
(:mod:`.http_sessions`) and pausing the garbage collector while bots start
(:mod:`.gc_pause`). May import every other package except :mod:`botyard.cli`
and :mod:`botyard.sandbox`; nothing below it imports it back, apart from the
public view the supervisor hands out.
"""
