-- session.update: the recording's outcome; the latest one per session wins.
select
    session_id,
    agent_id,
    body->>'$.recording_status' as recording_status,
    body->>'$.recording_url' as recording_url,
    try_cast(body->>'$.recording_duration' as double) as recording_duration_s,
    body->>'$.error_message' as error_message,
    received_at,
    ingested_at
from {{ source('raw', 'layercode_events') }}
where event_type = 'session.update' and session_id is not null
qualify row_number() over (partition by session_id order by received_at desc) = 1
