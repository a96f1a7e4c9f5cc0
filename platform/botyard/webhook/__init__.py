"""Webhook delivery: the endpoint, the journal of accepted updates, and each bot's secrets.

Owns the request checks and hand-over to a runner (:mod:`.endpoint`), the
``webhook_updates`` journal (:mod:`.journal`) and the ``webhook_secrets``
collection (:mod:`.secrets`).
"""
