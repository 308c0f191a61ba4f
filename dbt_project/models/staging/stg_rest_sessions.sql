-- The REST record (contract section 3): duration_ms / latency_ms, exchanges in transcript.
-- The latest successful fetch per session wins.
select
    session_id,
    agent_id,
    record->>'$.conversation_id' as conversation_id,
    try_cast(record->>'$.started_at' as timestamptz) as started_at,
    try_cast(record->>'$.ended_at' as timestamptz) as ended_at,
    {{ measure("record->>'$.duration_ms'", 604800000) }} as duration_ms,
    {{ measure("record->>'$.latency_ms'", 600000) }} as latency_ms,
    {{ measure("record->>'$.transcription_duration_seconds'", 604800) }} as transcription_duration_seconds,
    {{ measure("record->>'$.tts_duration_seconds'", 604800) }} as tts_duration_seconds,
    record->>'$.ip_address' as ip_address,
    record->>'$.country_code' as country_code,
    record->>'$.from_phone_number' as from_phone_number,
    record->>'$.from_phone_country' as from_phone_country,
    record->>'$.to_phone_number' as to_phone_number,
    record->>'$.to_phone_country' as to_phone_country,
    record->>'$.recording_status' as recording_status,
    record->>'$.recording_url' as recording_url,
    record->'$.transcript' as transcript,
    record->'$.metadata' as metadata,
    fetched_at
from {{ source('raw', 'layercode_session_details') }}
where http_status = 200
qualify row_number() over (partition by session_id order by fetched_at desc) = 1
