-- Durations and latencies are never negative, and a session never ends before it starts.
select session_id
from {{ ref('fct_sessions') }}
where duration_ms < 0 or latency_ms < 0 or ended_at < started_at
   or transcription_duration_seconds < 0 or tts_duration_seconds < 0
