{{ config(severity='warn', meta={'dagster': {'ref': {'name': 'stg_webhook_session_ends'}}}) }}
-- session.end numbers set aside by the `measure` macro (negative, absurd or not numbers):
-- the marts show them as null; this warning says how many there were.
select session_id, body->>'$.duration' as duration, body->>'$.latency' as latency
from {{ under_test(ref('stg_webhook_events')) }}
where event_type = 'session.end'
  and ((body->>'$.duration' is not null and {{ measure("body->>'$.duration'", 604800000) }} is null)
    or (body->>'$.latency' is not null and {{ measure("body->>'$.latency'", 600000) }} is null))
