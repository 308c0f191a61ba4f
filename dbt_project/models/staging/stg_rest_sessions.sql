-- The REST record (contract section 3): duration_ms / latency_ms, exchanges in transcript.
-- The latest successful fetch per session wins.
-- (the SQL is the macro rest_sessions, which the incremental marts call for their sessions only)
{{ rest_sessions() }}
