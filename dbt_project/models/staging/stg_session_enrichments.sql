-- Every enrichment version is kept; is_latest marks the newest successful one per session.
select
    *,
    error is null
      and row_number() over (partition by session_id, (error is null) order by enriched_at desc) = 1 as is_latest
from {{ source('enrichment', 'session_enrichments') }}
