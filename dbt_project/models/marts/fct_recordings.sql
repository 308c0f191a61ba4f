{{ config(materialized='incremental', unique_key='session_id', incremental_strategy='delete+insert',
          on_schema_change='append_new_columns') }}
-- One row per recording the recordings asset has tried to keep, with where the file is and
-- what its audio says. Incremental: the sessions fct_sessions rebuilt since this table's last
-- build (a recording's row changing rebuilds its session there).
with sessions as (
    select session_id, agent_id, conversation_id, session_date_at, duration_ms, reported_recording_duration_s
    from {{ ref('fct_sessions') }}
    where recording_download_status is not null
    {%- if is_incremental() %} and built_at > {{ watermark('built_at') }}{% endif %}
)
select
    s.session_id,
    s.agent_id,
    s.conversation_id,
    s.session_date_at,
    r.download_status,
    case when r.download_status = 'downloaded' then r.recording_path end as recording_uri,
    case when r.download_status = 'downloaded' then r.recording_bytes end as recording_bytes,
    case when r.download_status = 'downloaded' then r.recording_sha256 end as recording_sha256,
    case when r.download_status = 'downloaded' then r.recording_duration_s end as duration_s,
    s.reported_recording_duration_s as reported_duration_s,
    s.duration_ms / 1000.0 as call_duration_s,
    case when r.download_status = 'downloaded'
        then round(r.recording_duration_s - s.reported_recording_duration_s, 3) end as duration_gap_s,
    r.sample_rate,
    r.channels,
    r.encoding,
    r.silence_share,
    r.longest_silence_s,
    r.clipped_share,
    r.loudness_dbfs,
    r.peak_dbfs,
    r.silence_share >= {{ var('audio_silent_share') }} as is_silent,
    r.clipped_share > {{ var('audio_clipped_share') }} as is_clipped,
    abs(r.recording_duration_s - s.reported_recording_duration_s) > {{ var('audio_length_tolerance_s') }}
        as length_mismatch,
    case
        when r.download_status <> 'downloaded' or r.silence_share is null then null
        else not (
            r.silence_share >= {{ var('audio_silent_share') }}
            or r.clipped_share > {{ var('audio_clipped_share') }}
            or coalesce(
                abs(r.recording_duration_s - s.reported_recording_duration_s) > {{ var('audio_length_tolerance_s') }},
                false
            )
        )
    end as audio_ok,
    r.recording_error,
    r.fetched_at,
    {{ run_started_literal() }} as built_at
from sessions s
join {{ ref('stg_recordings') }} r using (session_id)
