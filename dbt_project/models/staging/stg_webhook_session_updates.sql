-- session.update: the recording's outcome; the latest one per session wins.
select
    session_id,
    agent_id,
    body->>'$.recording_status' as recording_status,
    body->>'$.recording_url' as recording_url,
    {{ measure("body->>'$.recording_duration'", 604800) }} as recording_duration_s,
    body->>'$.error_message' as error_message,
    received_at,
    ingested_at
from {{ ref('stg_webhook_events') }}
where event_type = 'session.update'
qualify row_number() over (partition by session_id order by received_at desc) = 1
