-- One row per agent: every agent the API lists, and every agent id seen in calls but not
-- listed (a deleted agent, another org's id, a listing not fetched yet) with no name.
with listed as (select * from {{ ref('stg_agents') }}),
seen as (
    select agent_id, min(session_date_at) as first_session_at, max(session_date_at) as last_session_at,
           count(*) as sessions
    from {{ ref('fct_sessions') }} where agent_id is not null group by 1
)
select
    agent_id,
    listed.agent_name,
    listed.agent_type,
    listed.agent_template_id,
    listed.backend,
    coalesce(listed.phone_numbers, []) as phone_numbers,
    len(coalesce(listed.phone_numbers, [])) as phone_number_count,
    listed.created_at,
    listed.updated_at,
    listed.agent_id is not null as known_to_api,
    coalesce(listed.listed_in_latest_fetch, false) as listed_in_latest_fetch,
    coalesce(seen.sessions, 0) as sessions,
    seen.first_session_at,
    seen.last_session_at
from listed full outer join seen using (agent_id)
