{{ config(materialized='incremental', unique_key='session_id', incremental_strategy='delete+insert') }}
-- One row per transcript turn. Incremental by session: a session whose sources changed gets
-- all its turns rebuilt (its transcript may have come from REST first, from session.end later).
-- depends_on: {{ ref('int_transcript_turns') }}
with touched as ({{ touched_sessions() }})
select
    t.turn_key,
    t.session_id,
    s.agent_id,
    t.position,
    t.role,
    t.text,
    t.words,
    t.spoken_at,
    t.offset_ms,
    t.transcript_source,
    s.source_loaded_at
from ({{ transcript_turns("select session_id from touched") }}) t
join {{ ref('int_session_sources') }} s using (session_id)
