{{ config(materialized='incremental', unique_key='session_id', incremental_strategy='delete+insert',
          on_schema_change='append_new_columns') }}
-- One row per transcript turn. Incremental by session: a session whose sources changed gets
-- all its turns rebuilt (its transcript may have come from REST first, from session.end later).
-- depends_on: {{ ref('int_transcript_turns') }}
with touched as ({{ touched_sessions() }}),
ordered as (
    select *,
           lag(role) over (partition by session_id order by position) as previous_role,
           lag(spoken_at) over (partition by session_id order by position) as previous_spoken_at
    from ({{ transcript_turns("select session_id from touched") }}) t
),
turns as (
    select *,
           -- caller turns numbered in order, and the assistant turn each one follows
           case when role = 'user' then count(*) filter (where role = 'user')
                over (partition by session_id order by position rows unbounded preceding) end as user_ordinal,
           max(case when role = 'assistant' then position end)
               over (partition by session_id order by position rows between unbounded preceding and 1 preceding)
               as previous_assistant_position,
           -- replies: assistant turns right after a caller turn, numbered in order (the k-th reply
           -- is the REST record's k-th exchange that has both a caller and an assistant message)
           case when role = 'assistant' and previous_role = 'user' then
                count(*) filter (where role = 'assistant' and previous_role = 'user')
                over (partition by session_id order by position rows unbounded preceding) end as reply_ordinal
    from ordered
),
rest_items as (
    select session_id, unnest(range(1, len(items) + 1)) as item_pos, unnest(items) as item
    from (select session_id, json_extract(transcript, '$[*]') as items from {{ ref('stg_rest_sessions') }}
          where json_type(transcript) = 'ARRAY' and session_id in (select session_id from touched))
),
exchange_latencies as (  -- the platform's own per-exchange latency, where a REST record was fetched
    select session_id, row_number() over (partition by session_id order by item_pos) as reply_ordinal,
           {{ measure("item->>'$.latency_ms'", 600000) }} as latency_ms
    from rest_items
    where coalesce(item->>'$.user_message', '') <> '' and coalesce(item->>'$.assistant_message', '') <> ''
),
messages as (  -- the k-th message of a session is its k-th caller turn
    select session_id, previous_turn_interrupted, words_heard, text_heard,
           row_number() over (partition by session_id order by received_at, turn_id) as user_ordinal
    from {{ ref('stg_webhook_messages') }} where session_id in (select session_id from touched)
),
barge_ins as (  -- interruption_context describes the assistant turn just before that caller turn
    select u.session_id, u.previous_assistant_position as position, m.previous_turn_interrupted,
           m.words_heard, m.text_heard
    from turns u join messages m using (session_id, user_ordinal)
    where u.previous_assistant_position is not null
)
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
    case when t.role = 'assistant' then coalesce(b.previous_turn_interrupted, false) end as interrupted,
    case when b.previous_turn_interrupted then b.words_heard end as words_heard,
    case when b.previous_turn_interrupted then b.text_heard end as text_heard,
    -- never a guess: the REST record's per-exchange latency, else null
    x.latency_ms,
    case when t.role = 'assistant' and t.previous_role = 'user' and t.spoken_at is not null
              and t.previous_spoken_at is not null
         then epoch_ms(t.spoken_at) - epoch_ms(t.previous_spoken_at) end as response_gap_ms,
    case when t.spoken_at is not null and t.previous_spoken_at is not null
         then epoch_ms(t.spoken_at) - epoch_ms(t.previous_spoken_at) end as gap_before_ms,
    s.source_loaded_at
from turns t
join {{ ref('int_session_sources') }} s using (session_id)
left join barge_ins b on b.session_id = t.session_id and b.position = t.position
left join exchange_latencies x on x.session_id = t.session_id and x.reply_ordinal = t.reply_ordinal
