{{ config(severity='warn', meta={'dagster': {'ref': {'name': 'fct_sessions'}}}) }}
-- Sessions whose session.end latency, in a unit never confirmed against a REST record, looks like
-- seconds: an end-to-end voice latency under 10 ms is not physical, 0.85 "ms" is almost
-- certainly 0.85 s. Their latency_ms is null (kept raw in webhook_latency_reported, never
-- averaged as milliseconds). It clears by itself after the next REST probe: the hourly
-- layercode_session_details run fetches one REST record of each such agent (with
-- LAYERCODE_API_KEY set), which teaches fct_sessions the agent's unit and fixes them all.
select session_id, agent_id, webhook_latency_reported
from {{ under_test(ref('fct_sessions')) }}
where webhook_latency_unit_unknown
