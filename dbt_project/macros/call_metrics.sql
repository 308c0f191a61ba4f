{#- The daily and hourly call metrics (agg_daily_call_metrics, agg_hourly_call_metrics): one
    definition, two grains. `period` is the SQL for the period column, `period_name` its name.
    Session measures group sessions by their start; turn measures group turns by their
    session's start, so a day's turn percentiles are over that day's turns, not over
    per-session figures. -#}
{% macro call_metrics(period, period_name) %}
with sessions as (
    select *, {{ period }} as {{ period_name }}
    from {{ ref('fct_sessions') }}
    where agent_id is not null and session_date_at is not null  -- a session known by no dated source has no period
    {%- if is_incremental() %}
      -- incremental: only the periods of the sessions fct_sessions rebuilt since this table's
      -- last build, each recomputed from all of its sessions
      and {{ period }} in (select distinct {{ period }} from {{ ref('fct_sessions') }}
                           where built_at > {{ watermark('built_at') }} and session_date_at is not null)
    {%- endif %}
),
turns as (
    select s.{{ period_name }}, s.agent_id,
           -- interrupted turns are kept out of the latency statistics (the caller cut them short)
           quantile_cont(t.latency_ms, 0.5) filter (where t.interrupted is not true) as turn_latency_ms_p50,
           quantile_cont(t.latency_ms, 0.95) filter (where t.interrupted is not true) as turn_latency_ms_p95,
           quantile_cont(t.latency_ms, 0.99) filter (where t.interrupted is not true) as turn_latency_ms_p99,
           count(t.latency_ms) filter (where t.interrupted is not true) as turns_with_latency,
           count(*) as assistant_turns,
           -- barge-ins are counted only where they were observable (t.interrupted is not null)
           count(*) filter (where t.interrupted is not null) as assistant_turns_observed,
           count(*) filter (where t.interrupted) as interrupted_turns
    from {{ ref('fct_turns') }} t
    join sessions s using (session_id)
    where t.role = 'assistant'
    group by all
),
session_metrics as (
    select
        {{ period_name }},
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
        (sum(coalesce(transcription_duration_seconds, 0)) + sum(coalesce(tts_duration_seconds, 0))) / 60.0
            as speech_minutes,
        avg(caller_talk_share) as caller_talk_share_avg,
        -- a recording is expected where the platform said the org records (completed, failed or
        -- still in progress); not_available and disabled sessions never had one to keep
        count(*) filter (where recording_state in ('completed', 'failed', 'in_progress')) as sessions_recording_expected,
        count(*) filter (where has_recording) as sessions_with_recording,
        count(*) filter (where has_recording)
            / nullif(count(*) filter (where recording_state in ('completed', 'failed', 'in_progress')), 0)
            as recording_coverage,
        count(*) filter (where sentiment = 'positive') as sentiment_positive,
        count(*) filter (where sentiment = 'neutral') as sentiment_neutral,
        count(*) filter (where sentiment = 'negative') as sentiment_negative,
        count(*) filter (where sentiment = 'mixed') as sentiment_mixed,
        count(*) filter (where outcome is not null) as sessions_analysed,
        count(*) filter (where outcome = 'resolved') as outcome_resolved,
        count(*) filter (where outcome = 'unresolved') as outcome_unresolved,
        count(*) filter (where outcome = 'escalated') as outcome_escalated,
        count(*) filter (where outcome = 'abandoned') as outcome_abandoned,
        count(*) filter (where outcome = 'voicemail') as outcome_voicemail,
        count(*) filter (where outcome = 'escalated') / nullif(count(*) filter (where outcome is not null), 0)
            as escalation_rate,
        count(*) filter (where outcome = 'resolved') / nullif(count(*) filter (where outcome is not null), 0)
            as containment_rate,
        avg(quality_score) as quality_score_avg,
        coalesce(sum(enrichment_cost_usd), 0) as estimated_cost_usd,
        sum(interruptions) as interruptions,  -- null when no session of the period could observe one
        count(*) filter (where barge_ins_observable) as sessions_barge_ins_observable,
        count(*) filter (where ended_by = 'backfill') as sessions_completed_by_backfill
    from sessions
    group by all
)
select
    m.*,
    coalesce(t.assistant_turns, 0) as assistant_turns,
    coalesce(t.assistant_turns_observed, 0) as assistant_turns_observed,
    case when t.assistant_turns_observed > 0 then t.interrupted_turns end as interrupted_turns,
    t.interrupted_turns / nullif(t.assistant_turns_observed, 0) as interruption_rate,
    coalesce(t.turns_with_latency, 0) as turns_with_latency,
    t.turn_latency_ms_p50,
    t.turn_latency_ms_p95,
    t.turn_latency_ms_p99,
    {{ run_started_literal() }} as built_at
from session_metrics m
left join turns t using ({{ period_name }}, agent_id)
{% endmacro %}
