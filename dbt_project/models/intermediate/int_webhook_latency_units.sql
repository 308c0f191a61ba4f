-- The unit of each agent's session.end `latency`, learned where the REST record's `latency_ms`
-- (milliseconds, documented) describes the same session (contract section 5: the webhook's
-- unit is undocumented; the docs' example is 120, a community fixture has 0.85). The median
-- ratio REST / webhook is about 1000 when the webhook sends seconds and about 1 when it sends
-- milliseconds; anything else is left unknown rather than guessed.
with pairs as (
    select e.agent_id, r.latency_ms / e.latency_ms as ratio
    from {{ ref('stg_webhook_session_ends') }} e
    join {{ ref('stg_rest_sessions') }} r using (session_id)
    where e.latency_ms > 0 and r.latency_ms > 0
)
select
    agent_id,
    count(*) as sessions_compared,
    median(ratio) as median_rest_to_webhook_ratio,
    case when median(ratio) between 500 and 2000 then 'seconds'
         when median(ratio) between 0.5 and 2 then 'milliseconds' end as webhook_latency_unit
from pairs
group by agent_id
