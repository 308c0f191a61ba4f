{{ config(materialized='view') }}
-- Each session's current analysis (is_latest: the newest successful row) beside every other
-- successful version of it (another prompt version, model or provider), one row per pair:
-- what changed when the prompt or model changed, before the marts move to it. The marts
-- themselves read only the current version.
-- not materialized: a filter on session_id (a test's, a reader's) then reaches the table scan,
-- instead of every session's versions being numbered first
with ok as not materialized (
    select * from {{ ref('stg_session_enrichments') }} where error is null
),
cur as not materialized (select * from ok where is_latest)
select
    cur.session_id,
    cur.agent_id,
    cur.provider        as current_provider,
    cur.model           as current_model,
    cur.prompt_version  as current_prompt_version,
    other.provider      as other_provider,
    other.model         as other_model,
    other.prompt_version as other_prompt_version,
    cur.caller_name     as current_caller_name,
    other.caller_name   as other_caller_name,
    cur.sentiment       as current_sentiment,
    other.sentiment     as other_sentiment,
    cur.outcome         as current_outcome,
    other.outcome       as other_outcome,
    cur.quality_score   as current_quality_score,
    other.quality_score as other_quality_score,
    -- equal, or both unknown
    coalesce(cur.caller_name = other.caller_name, cur.caller_name is null and other.caller_name is null)
        as caller_name_agrees,
    cur.sentiment = other.sentiment as sentiment_agrees,
    cur.outcome = other.outcome as outcome_agrees,
    cur.enriched_at     as current_enriched_at,
    other.enriched_at   as other_enriched_at
from cur
join ok as other
  on other.session_id = cur.session_id
 and other.cache_key <> cur.cache_key
