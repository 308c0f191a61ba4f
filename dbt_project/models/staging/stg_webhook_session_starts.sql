select
    session_id,
    agent_id,
    body->>'$.conversation_id' as conversation_id,
    turn_id,
    body->>'$.from_phone_number' as from_phone_number,
    body->>'$.to_phone_number' as to_phone_number,
    body->'$.metadata' as metadata,
    received_at,
    ingested_at
from {{ source('raw', 'layercode_events') }}
where event_type = 'session.start' and session_id is not null
