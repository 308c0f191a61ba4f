-- Every session known from any source, with the newest load time across its sources:
-- the incremental marts rebuild exactly the sessions whose sources changed.
with loads as (
    select session_id, agent_id, ingested_at as loaded_at from {{ ref('stg_webhook_events') }}
    union all
    select session_id, agent_id, fetched_at from {{ source('raw', 'layercode_session_details') }} where http_status = 200
    union all
    select session_id, agent_id, fetched_at from {{ source('raw', 'layercode_recordings') }}
    union all
    select session_id, agent_id, enriched_at from {{ source('enrichment', 'session_enrichments') }}
), sessions as (
    select session_id, min(agent_id) as agent_id, max(loaded_at) as loaded_at from loads group by session_id
), agent_changes as (  -- a renamed agent (a new version of its record) touches all of its sessions
    select agent_id, max(first_seen_at) as changed_at from {{ source('raw', 'layercode_agents') }} group by 1
)
select s.session_id, s.agent_id, greatest(s.loaded_at, coalesce(a.changed_at, s.loaded_at)) as source_loaded_at
from sessions s
left join agent_changes a using (agent_id)
