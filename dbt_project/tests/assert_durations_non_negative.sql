-- Durations and latencies are never negative: staging sets out-of-range payload values aside
-- (see the `measure` macro), so a row here is a bug in the models, not odd input.
select session_id
from {{ under_test(ref('fct_sessions')) }}
where duration_ms < 0 or latency_ms < 0
   or transcription_duration_seconds < 0 or tts_duration_seconds < 0
