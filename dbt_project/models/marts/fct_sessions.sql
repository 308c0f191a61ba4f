{{ config(materialized='incremental', unique_key='session_id', incremental_strategy='delete+insert',
          on_schema_change='append_new_columns',
          post_hook="{{ build_remaining_chunks() }}") }}
-- One row per session (connection), merging session.end, session.update, the REST record,
-- the downloaded recording and the latest enrichment. Where sources disagree the REST record
-- (the platform's authoritative copy) wins over the session.end webhook; *_source columns
-- say which one each value came from.
-- depends_on: {{ ref('int_session_sources') }} {{ ref('stg_webhook_session_ends') }} {{ ref('stg_rest_sessions') }} {{ ref('stg_session_enrichments') }}
-- {{ ref('stg_webhook_session_updates') }}
{%- set touched_sql %}
    {{ touched_sessions() }}
    {% if is_incremental() and 'latency_source' in adapter.get_columns_in_relation(this) | map(attribute='name') | list %}
    union  -- and sessions whose latency came from session.end in a unit that has since been learned
    select t.session_id from {{ this }} t join {{ ref('int_webhook_latency_units') }} u using (agent_id)
    where t.latency_source = 'session.end' and t.webhook_latency_unit is distinct from u.webhook_latency_unit
    {% endif %}
    {#- a metadata key promoted since the last build: every session gets its new column filled #}
    {%- if is_incremental() %}
    {%- set existing = adapter.get_columns_in_relation(this) | map(attribute='name') | map('lower') | list %}
    {%- for key in var('promoted_metadata_keys', '').split(',') if key.strip() %}
    {%- if ('metadata_' ~ key.strip() | lower) not in existing %}
    union select session_id from {{ ref('int_session_sources') }}
    {%- endif %}
    {%- endfor %}
    {%- endif %}
{%- endset %}
{#- the touched sessions as literals when few, else the CTE below (see session_id_list) #}
{%- set touched = session_id_list(touched_sql, "select session_id from touched") %}
with touched as ({{ touched_sql }}),
src as ({{ session_sources(touched) }}),
starts as (
    select session_id, min(conversation_id) as conversation_id, min(from_phone_number) as from_phone_number,
           min(to_phone_number) as to_phone_number, min(received_at) as first_event_at, any_value(metadata) as metadata
    from {{ ref('stg_webhook_session_starts') }} where {{ sessions_in(touched) }} group by 1
),
any_events as (
    select session_id, min(body->>'$.conversation_id') as conversation_id, min(received_at) as first_seen_at,
           -- the session's metadata from whichever payloads carry it, custom_metadata first
           first(metadata order by metadata_field = 'custom_metadata' desc, received_at)
               filter (where metadata is not null) as metadata,
           first(headers order by received_at) filter (where headers is not null) as request_headers
    from {{ ref('stg_webhook_events') }} where {{ sessions_in(touched) }} group by 1
),
ends as ({{ session_ends(touched) }}),
updates as ({{ session_updates(touched) }}),
rest as ({{ rest_sessions(touched) }}),
recs as (select * from {{ ref('stg_recordings') }} where session_id in ({{ touched }})),
agents as (select agent_id, agent_name from {{ ref('stg_agents') }}),
message_stats as (  -- what the `message` webhooks reported about barge-ins
    select session_id, count(*) filter (where previous_turn_interrupted) as barge_ins_reported
    from {{ ref('stg_webhook_messages') }} where {{ sessions_in(touched) }} group by 1
),
data_events as (
    select session_id, count(*) as data_events from {{ ref('stg_webhook_data') }}
    where {{ sessions_in(touched) }} group by 1
),
latency_units as (select agent_id, webhook_latency_unit from {{ ref('int_webhook_latency_units') }}),
enr_all as ({{ session_enrichments(touched) }}),
enr as (select * from enr_all where is_latest),
enr_versions as (  -- the session analysed by more than one provider, model or prompt version
    select session_id, count(*) as enrichment_versions,
           count(distinct outcome) > 1 or count(distinct sentiment) > 1 as enrichment_versions_disagree
    from enr_all where error is null group by 1
),
turn_stats as (
    select session_id,
           count(*) as turns,
           count(*) filter (where role = 'user') as user_turns,
           count(*) filter (where role = 'assistant') as assistant_turns,
           coalesce(sum(words) filter (where role = 'user'), 0) as user_words,
           coalesce(sum(words) filter (where role = 'assistant'), 0) as assistant_words,
           count(*) filter (where interrupted) as barge_ins_placed,
           -- interrupted turns are kept out of latency statistics
           quantile_cont(latency_ms, 0.5) filter (where role = 'assistant' and interrupted is not true) as turn_latency_ms_p50,
           quantile_cont(latency_ms, 0.95) filter (where role = 'assistant' and interrupted is not true) as turn_latency_ms_p95,
           -- a turn dated before the session's start is no response time (never a negative one)
           min(offset_ms) filter (where role = 'assistant' and not spoken_before_start) as first_response_ms,
           count(*) filter (where spoken_before_start) as turns_dated_before_start,
           min(spoken_at) as first_spoken_at,
           max(gap_before_ms) as longest_gap_ms,
           min(transcript_source) as transcript_source
    from {{ ref('fct_turns') }} where session_id in ({{ touched }}) group by 1
),
merged as (
    select
        src.session_id,
        coalesce(rest.agent_id, src.agent_id) as agent_id,
        coalesce(rest.conversation_id, ends.conversation_id, starts.conversation_id, any_events.conversation_id) as conversation_id,
        coalesce(rest.started_at, ends.started_at) as started_at,
        coalesce(rest.ended_at, ends.ended_at) as ended_at,
        coalesce(rest.duration_ms, ends.duration_ms,
                 -- from the timestamps only when they are in order (a clock-skewed payload gives null)
                 nullif(greatest(epoch_ms(coalesce(rest.ended_at, ends.ended_at))
                                 - epoch_ms(coalesce(rest.started_at, ends.started_at)), -1), -1)) as duration_ms,
        -- milliseconds: the REST record's where there is one; else session.end's, converted when
        -- this agent's webhooks were found to send seconds (see int_webhook_latency_units). A
        -- session.end value under 10 from an agent whose unit is not learned yet is null: it reads
        -- as seconds (0.85) far more often than as a 5 ms turn, and is never averaged as ms.
        coalesce(rest.latency_ms,
                 case when lu.webhook_latency_unit = 'seconds' then ends.latency_ms * 1000
                      when lu.webhook_latency_unit is null and ends.latency_ms < 10 then null
                      else ends.latency_ms end)
            as latency_ms,
        case when rest.latency_ms is not null then 'rest'
             when ends.latency_ms is not null and not (lu.webhook_latency_unit is null and ends.latency_ms < 10)
                 then 'session.end' end
            as latency_source,
        ends.latency_ms as webhook_latency_reported,
        rest.latency_ms is null and lu.webhook_latency_unit is null and ends.latency_ms < 10
            as webhook_latency_unit_unknown,
        lu.webhook_latency_unit,
        agents.agent_name,
        coalesce(rest.transcription_duration_seconds, ends.transcription_duration_seconds) as transcription_duration_seconds,
        coalesce(rest.tts_duration_seconds, ends.tts_duration_seconds) as tts_duration_seconds,
        coalesce(rest.from_phone_number, ends.from_phone_number, starts.from_phone_number) as from_phone_number,
        coalesce(rest.to_phone_number, ends.to_phone_number, starts.to_phone_number) as to_phone_number,
        rest.from_phone_country,
        rest.to_phone_country,
        coalesce(rest.country_code, ends.country_code) as country_code,
        coalesce(rest.ip_address, ends.ip_address) as ip_address,
        coalesce(any_events.metadata, rest.metadata) as metadata,
        any_events.request_headers,
        case when rest.session_id is not null then 'rest' when ends.session_id is not null then 'webhook'
             else 'events_only' end as session_source,
        case when ends.session_id is not null then 'webhook'
             when rest.ended_at is not null then 'backfill' end as ended_by,
        ends.session_id is not null as has_session_end_webhook,
        rest.session_id is not null as has_rest_record,
        -- one recording vocabulary: completed / failed / in_progress / not_available / disabled / unknown
        case
            when recs.download_status = 'downloaded' then 'completed'
            when updates.recording_status in ('completed', 'failed') then updates.recording_status
            when ends.recording_setting = 'disabled' then 'disabled'
            when rest.recording_status in ('completed', 'in_progress', 'not_available') then rest.recording_status
            when ends.recording_setting = 'enabled' then 'in_progress'
            else 'unknown'
        end as recording_state,
        case
            when recs.download_status = 'downloaded' then 'download'
            when updates.recording_status in ('completed', 'failed') then 'session.update'
            when ends.recording_setting = 'disabled' then 'session.end'
            when rest.recording_status in ('completed', 'in_progress', 'not_available') then 'rest'
            when ends.recording_setting = 'enabled' then 'session.end'
        end as recording_state_source,
        recs.download_status as recording_download_status,
        case when recs.download_status = 'downloaded' then recs.recording_path end as recording_path,
        case when recs.download_status = 'downloaded' then recs.recording_bytes end as recording_bytes,
        case when recs.download_status = 'downloaded' then recs.recording_duration_s end as recording_duration_s,
        case when recs.download_status = 'downloaded' then recs.sample_rate end as recording_sample_rate,
        case when recs.download_status = 'downloaded' then recs.encoding end as recording_encoding,
        updates.error_message as recording_error,
        updates.recording_duration_s as reported_recording_duration_s,
        coalesce(recs.download_status = 'downloaded', false) as has_recording,
        coalesce(ts.turns, 0) as turns,
        coalesce(ts.user_turns, 0) as user_turns,
        coalesce(ts.assistant_turns, 0) as assistant_turns,
        coalesce(ts.user_words, 0) as user_words,
        coalesce(ts.assistant_words, 0) as assistant_words,
        -- barge-ins: known only where `message` webhooks reached the pipeline (contract section 6);
        -- a session-webhook-only deployment, a hosted (agent.llm) agent or a REST-only session
        -- is null, never zero
        ms.session_id is not null as barge_ins_observable,
        case when ms.session_id is not null then ms.barge_ins_reported end as interruptions,
        case when ms.session_id is not null then ms.barge_ins_reported - coalesce(ts.barge_ins_placed, 0)
             end as unplaced_interruptions,
        ts.turn_latency_ms_p50,
        ts.turn_latency_ms_p95,
        ts.first_response_ms,
        ts.longest_gap_ms,
        coalesce(ts.turns_dated_before_start, 0) as turns_dated_before_start,
        coalesce(rest.transcription_duration_seconds, ends.transcription_duration_seconds)
            / nullif(coalesce(rest.transcription_duration_seconds, ends.transcription_duration_seconds)
                     + coalesce(rest.tts_duration_seconds, ends.tts_duration_seconds), 0) as caller_talk_share,
        coalesce(data_events.data_events, 0) as data_events,
        ts.transcript_source,
        enr.summary,
        enr.caller_name,
        enr.sentiment,
        enr.sentiment_score,
        enr.outcome,
        enr.topics,
        enr.quality_score,
        enr.quality_rationale,
        enr.compliance_flags,
        enr.action_items,
        enr.custom_fields,
        enr.provider as enrichment_provider,
        enr.model as enrichment_model,
        enr.prompt_version as enrichment_prompt_version,
        enr.cost_usd as enrichment_cost_usd,
        coalesce(ev.enrichment_versions, 0) as enrichment_versions,
        coalesce(ev.enrichment_versions_disagree, false) as enrichment_versions_disagree,
        any_events.first_seen_at,
        ts.first_spoken_at,
        src.source_loaded_at,
        {{ run_started_literal() }} as built_at
    from src
    left join starts using (session_id)
    left join any_events using (session_id)
    left join ends using (session_id)
    left join updates using (session_id)
    left join rest using (session_id)
    left join recs using (session_id)
    left join enr using (session_id)
    left join enr_versions ev using (session_id)
    left join turn_stats ts using (session_id)
    left join data_events using (session_id)
    left join message_stats ms using (session_id)
    left join agents on agents.agent_id = coalesce(rest.agent_id, src.agent_id)
    left join latency_units lu on lu.agent_id = coalesce(rest.agent_id, src.agent_id)
)
select
    *,
    {#- keys an operator promotes to columns (LAYERCODE_PROMOTED_METADATA_KEYS=tenant_id,crm_id) #}
    {%- for key in var('promoted_metadata_keys', '').split(',') if key.strip() %}
    {%- set key = key.strip() | lower %}
    {%- if not modules.re.fullmatch('[a-z][a-z0-9_]{0,62}', key) %}
    {{ exceptions.raise_compiler_error("promoted metadata key " ~ key ~ " must be a lower-case identifier") }}
    {%- endif %}
    metadata->>'$.{{ key }}' as metadata_{{ key }},
    {%- endfor %}
    case when from_phone_number is not null then 'phone' else 'web' end as channel,
    -- dated by its start; without one, by its first transcript timestamp where that is not after
    -- the first event was received, else by that receive time
    coalesce(started_at,
             case when first_spoken_at <= coalesce(first_seen_at, first_spoken_at) then first_spoken_at end,
             first_seen_at) as session_date_at,
    ended_by is not null as is_complete
from merged
