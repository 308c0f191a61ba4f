-- `data` events (contract section 5): structured JSON the caller's web client sent, per
-- session and turn, e.g. UI events. Kept as JSON; one row per distinct event.
select
    event_key,
    session_id,
    agent_id,
    turn_id,
    body->>'$.conversation_id' as conversation_id,
    body->'$.data' as data,
    received_at,
    ingested_at
from {{ ref('stg_webhook_events') }}
where event_type = 'data'
