select
    session_id,
    agent_id,
    body->>'$.conversation_id' as conversation_id,
    turn_id,
    body->>'$.from_phone_number' as from_phone_number,
    body->>'$.to_phone_number' as to_phone_number,
    metadata,
    received_at,
    ingested_at
from {{ ref('stg_webhook_events') }}
where event_type = 'session.start'
