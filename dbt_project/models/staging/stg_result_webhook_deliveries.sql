-- The result webhook outbox's deliveries (one row per message and endpoint), as the
-- `result_webhooks` asset last mirrored them.
select
    message_id,
    event_type,
    session_id,
    agent_id,
    endpoint,
    status,
    attempts,
    created_at,
    first_attempt_at,
    last_attempt_at,
    delivered_at,
    next_attempt_at,
    last_status,
    last_error,
    mirrored_at
from {{ source('raw', 'result_webhook_deliveries') }}
