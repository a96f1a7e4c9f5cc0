"""botyard's benchmarks, side by side with plain aiogram: ``python -m benchmarks [--quick]``.

Figures: round trips per update (:mod:`.roundtrips`), throughput and latency
(:mod:`.throughput`), density and startup (:mod:`.density`), cleanup
(:mod:`.cleanup`). Contenders: :mod:`.contenders`; the plain-aiogram program
they run: :mod:`.aiogram_app`. The table and ``results.json``: :mod:`.report`.
"""
