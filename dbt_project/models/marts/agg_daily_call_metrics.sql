-- Per day (UTC, by session start) and agent: volumes, durations, latency, speech, recording
-- coverage, enrichment mixes and cost.
select
    cast(session_date_at at time zone 'UTC' as date) as call_date,
    agent_id,
    any_value(agent_name) as agent_name,
    count(distinct conversation_id) as calls,
    count(*) as sessions,
    quantile_cont(duration_ms, 0.5) as duration_ms_p50,
    quantile_cont(duration_ms, 0.95) as duration_ms_p95,
    avg(duration_ms) as duration_ms_avg,
    quantile_cont(latency_ms, 0.5) as latency_ms_p50,
    quantile_cont(latency_ms, 0.95) as latency_ms_p95,
    sum(coalesce(transcription_duration_seconds, 0)) as transcription_seconds,
    sum(coalesce(tts_duration_seconds, 0)) as tts_seconds,
    -- a recording is expected where the platform said the org records (completed, failed or
    -- still in progress); not_available and disabled sessions never had one to keep
    count(*) filter (where recording_state in ('completed', 'failed', 'in_progress')) as sessions_recording_expected,
    count(*) filter (where has_recording) as sessions_with_recording,
    count(*) filter (where has_recording)
        / nullif(count(*) filter (where recording_state in ('completed', 'failed', 'in_progress')), 0) as recording_coverage,
    count(*) filter (where sentiment = 'positive') as sentiment_positive,
    count(*) filter (where sentiment = 'neutral') as sentiment_neutral,
    count(*) filter (where sentiment = 'negative') as sentiment_negative,
    count(*) filter (where sentiment = 'mixed') as sentiment_mixed,
    count(*) filter (where outcome = 'resolved') as outcome_resolved,
    count(*) filter (where outcome = 'unresolved') as outcome_unresolved,
    count(*) filter (where outcome = 'escalated') as outcome_escalated,
    count(*) filter (where outcome = 'abandoned') as outcome_abandoned,
    count(*) filter (where outcome = 'voicemail') as outcome_voicemail,
    avg(quality_score) as quality_score_avg,
    coalesce(sum(enrichment_cost_usd), 0) as estimated_cost_usd,
    sum(interruptions) as interruptions,
    -- interrupted assistant turns over assistant turns (barge-ins the platform reported)
    sum(interruptions) / nullif(sum(assistant_turns), 0) as interruption_rate,
    count(*) filter (where ended_by = 'backfill') as sessions_completed_by_backfill
from {{ ref('fct_sessions') }}
where agent_id is not null and session_date_at is not null  -- a session known by no dated source has no day
group by all
