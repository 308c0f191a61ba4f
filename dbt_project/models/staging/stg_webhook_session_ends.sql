-- session.end: duration is in milliseconds; latency is a number in an undocumented unit, kept
-- as sent here (fct_sessions reconciles it with the REST record). Either may be null.
-- (the SQL is the macro session_ends, which the incremental marts call for their sessions only)
{{ session_ends() }}
