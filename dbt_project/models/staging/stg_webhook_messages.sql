select
    session_id,
    agent_id,
    body->>'$.conversation_id' as conversation_id,
    turn_id,
    body->>'$.text' as text,
    received_at,
    ingested_at
from {{ ref('stg_webhook_events') }}
where event_type = 'message'
