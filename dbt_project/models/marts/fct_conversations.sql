{{ config(materialized='incremental', unique_key='conversation_id', incremental_strategy='delete+insert',
          on_schema_change='append_new_columns') }}
-- One row per conversation (a call), which may span several sessions (reconnects). Incremental:
-- a run rebuilds the conversations of the sessions fct_sessions rebuilt since this table's last
-- build, from all of their sessions.
{%- if is_incremental() %}
with touched as (
    select distinct conversation_id from {{ ref('fct_sessions') }}
    where built_at > {{ watermark('built_at') }} and conversation_id is not null
)
{%- endif %}
select
    conversation_id,
    min(agent_id) as agent_id,
    count(*) as sessions,
    count(*) - 1 as reconnects,
    min(started_at) as started_at,
    max(ended_at) as ended_at,
    sum(duration_ms) as duration_ms,
    sum(turns) as turns,
    sum(user_words) as user_words,
    sum(assistant_words) as assistant_words,
    max(channel) as channel,
    bool_or(has_recording) as has_recording,
    bool_and(is_complete) as is_complete,
    arg_max(sentiment, started_at) as final_sentiment,
    arg_max(outcome, started_at) as final_outcome,
    max(caller_name) as caller_name,
    sum(enrichment_cost_usd) as enrichment_cost_usd,
    {{ run_started_literal() }} as built_at
from {{ ref('fct_sessions') }}
where conversation_id is not null
{%- if is_incremental() %} and conversation_id in (select conversation_id from touched){% endif %}
group by conversation_id
