-- One row per review from the dashboard's workbench, beside the enrichment the reviewer was
-- shown: whether each answer was confirmed. A table: reviews are written by people, so they
-- stay few, and a rebuild keeps is_latest right when a session is reviewed again.
select
    r.session_id,
    r.review_id,
    r.reviewer,
    r.reviewed_at,
    r.caller_name,
    r.outcome,
    r.sentiment,
    r.topics,
    r.quality_score,
    r.comment,
    r.flagged_turns,
    r.flagged_turn_count,
    r.is_latest,
    s.agent_id,
    r.shown_provider as enrichment_provider,
    r.shown_model as enrichment_model,
    r.shown_prompt_version as enrichment_prompt_version,
    r.shown_outcome as enrichment_outcome,
    r.shown_sentiment as enrichment_sentiment,
    r.shown_caller_name as enrichment_caller_name,
    r.shown_quality_score as enrichment_quality_score,
    r.shown_outcome is not null and r.outcome = r.shown_outcome as outcome_confirmed,
    r.shown_sentiment is not null and r.sentiment = r.shown_sentiment as sentiment_confirmed,
    coalesce(lower(trim(r.caller_name)) = lower(trim(r.shown_caller_name)),
             r.caller_name is null and r.shown_caller_name is null) as caller_name_confirmed,
    r.quality_score - r.shown_quality_score as quality_score_correction,
    {{ run_started_literal() }} as built_at
from {{ ref('stg_reviews') }} r
left join {{ ref('fct_sessions') }} s using (session_id)
