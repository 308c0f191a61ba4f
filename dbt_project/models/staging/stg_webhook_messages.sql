select
    session_id,
    agent_id,
    body->>'$.conversation_id' as conversation_id,
    turn_id,
    body->>'$.text' as text,
    received_at,
    ingested_at
from {{ source('raw', 'layercode_events') }}
where event_type = 'message' and session_id is not null
