"""Results pushed back into the customer's product: `call.analyzed`, `call.recording_ready`
and `call.erased`, signed as Standard Webhooks, recorded in an outbox before the first
attempt and delivered at least once with the same `webhook-id` on every retry.

`messages` builds the bodies, `outbox` keeps them (SQLite, outside the warehouse, so no
delivery ever waits for or holds the warehouse writers' lock), `delivery` sends them,
`signing` signs them. No Dagster here: the assets and the sensor in `defs/results/` call these.
"""
