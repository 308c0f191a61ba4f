{{ config(materialized='incremental', unique_key='agent_id', incremental_strategy='delete+insert') }}
-- The unit of each agent's session.end `latency`, learned where the REST record's `latency_ms`
-- (milliseconds, documented) describes the same session (contract section 5: the webhook's
-- unit is undocumented; the docs' example is 120, a community fixture has 0.85). The median
-- ratio REST / webhook is about 1000 when the webhook sends seconds and about 1 when it sends
-- milliseconds; anything else is left unknown rather than guessed.
-- A table, relearned only for agents with REST records fetched since the last build: the pairs are
-- read from the REST side, so a run without new REST records reads none.
-- depends_on: {{ ref('stg_rest_sessions') }} {{ ref('stg_webhook_session_ends') }}
with agents_to_learn as (
    select distinct agent_id from {{ source('raw', 'layercode_session_details') }}
    where http_status = 200 {% if is_incremental() %}and fetched_at > {{ watermark('rest_fetched_until') }}{% endif %}
),
rest as (
    {{ rest_sessions("select session_id from " ~ source('raw', 'layercode_session_details')
                     ~ " where agent_id in (select agent_id from agents_to_learn)") }}
),
pairs as (
    select r.agent_id, r.latency_ms / e.latency_ms as ratio
    from rest r
    join ({{ session_ends("select session_id from rest") }}) e using (session_id)
    where e.latency_ms > 0 and r.latency_ms > 0
),
learned as (
    select agent_id, count(*) as sessions_compared, median(ratio) as median_rest_to_webhook_ratio
    from pairs group by agent_id
)
select
    a.agent_id,
    coalesce(l.sessions_compared, 0) as sessions_compared,
    l.median_rest_to_webhook_ratio,
    case when l.median_rest_to_webhook_ratio between 500 and 2000 then 'seconds'
         when l.median_rest_to_webhook_ratio between 0.5 and 2 then 'milliseconds' end as webhook_latency_unit,
    (select max(fetched_at) from rest r where r.agent_id = a.agent_id) as rest_fetched_until
from agents_to_learn a
left join learned l using (agent_id)
