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
)
select session_id, min(agent_id) as agent_id, max(loaded_at) as source_loaded_at
from loads
group by session_id
