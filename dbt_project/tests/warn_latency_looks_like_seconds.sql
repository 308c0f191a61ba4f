{{ config(severity='warn', meta={'dagster': {'ref': {'name': 'fct_sessions'}}}) }}
-- Sessions whose latency came from session.end alone, in a unit never confirmed against a REST
-- record, and whose value looks like seconds: an end-to-end voice latency under 10 ms is not
-- physical, 0.85 "ms" is almost certainly 0.85 s. Kept as sent (not guessed); fetching one
-- REST record of the agent teaches fct_sessions the agent's unit and fixes them all.
select session_id, agent_id, latency_ms
from {{ ref('fct_sessions') }}
where latency_source = 'session.end' and webhook_latency_unit is null and latency_ms < 10
