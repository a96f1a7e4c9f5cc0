"""Sweeping stale FSM state: the sweep itself and its schedule.

Owns deciding what is stale and calling ``on_state_expired`` hooks
(:mod:`.sweep`), and running the sweep on ``cleanup.schedule``
(:mod:`.schedule`). Every query on FSM records goes through :mod:`botyard.storage`.
"""
