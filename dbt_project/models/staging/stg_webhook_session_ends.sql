-- session.end: duration is in milliseconds; latency is a number in an undocumented unit, kept
-- as sent here (fct_sessions reconciles it with the REST record). Either may be null.
select
    session_id,
    agent_id,
    coalesce(body->>'$.agent_id', agent_id) as reported_agent_id,
    body->>'$.conversation_id' as conversation_id,
    try_cast(body->>'$.started_at' as timestamptz) as started_at,
    try_cast(body->>'$.ended_at' as timestamptz) as ended_at,
    {{ measure("body->>'$.duration'", 604800000) }} as duration_ms,
    {{ measure("body->>'$.latency'", 600000) }} as latency_ms,
    {{ measure("body->>'$.transcription_duration_seconds'", 604800) }} as transcription_duration_seconds,
    {{ measure("body->>'$.tts_duration_seconds'", 604800) }} as tts_duration_seconds,
    body->>'$.ip_address' as ip_address,
    body->>'$.country_code' as country_code,
    body->>'$.from_phone_number' as from_phone_number,
    body->>'$.to_phone_number' as to_phone_number,
    body->>'$.recording_status' as recording_setting,
    body->'$.transcript' as transcript,
    metadata,
    received_at,
    ingested_at
from {{ ref('stg_webhook_events') }}
where event_type = 'session.end'
qualify row_number() over (partition by session_id order by received_at desc) = 1
