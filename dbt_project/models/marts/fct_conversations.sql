-- One row per conversation (a call), which may span several sessions (reconnects).
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
    sum(enrichment_cost_usd) as enrichment_cost_usd
from {{ ref('fct_sessions') }}
where conversation_id is not null
group by conversation_id
