{{ config(materialized='incremental', unique_key='session_id', incremental_strategy='delete+insert',
          on_schema_change='append_new_columns',
          post_hook="{{ build_remaining_chunks() }}") }}
-- One row per transcript turn. Incremental by session: a session whose sources changed gets
-- all its turns rebuilt (its transcript may have come from REST first, from session.end later).
-- depends_on: {{ ref('int_transcript_turns') }} {{ ref('stg_rest_sessions') }} {{ ref('stg_webhook_session_ends') }}
{%- set touched_sql = touched_sessions() %}
{#- the touched sessions as literals when few, else the CTE below (see session_id_list) #}
{%- set touched = session_id_list(touched_sql, "select session_id from touched") %}
with touched as ({{ touched_sql }}),
ordered as (
    select *,
           lag(role) over (partition by session_id order by position) as previous_role,
           lag(spoken_at) over (partition by session_id order by position) as previous_spoken_at
    from ({{ transcript_turns(touched) }}) t
),
turns as (
    select *,
           max(case when role = 'assistant' then position end)
               over (partition by session_id order by position rows between unbounded preceding and 1 preceding)
               as previous_assistant_position,
           min(case when role = 'assistant' then position end)
               over (partition by session_id order by position rows between 1 following and unbounded following)
               as next_assistant_position,
           -- replies: assistant turns right after a caller turn, numbered in order (the k-th reply
           -- is the REST record's k-th exchange that has both a caller and an assistant message)
           case when role = 'assistant' and previous_role = 'user' then
                count(*) filter (where role = 'assistant' and previous_role = 'user')
                over (partition by session_id order by position rows unbounded preceding) end as reply_ordinal
    from ordered
),
rest_items as (
    select session_id, unnest(range(1, len(items) + 1)) as item_pos, unnest(items) as item
    from (select session_id, json_extract(transcript, '$[*]') as items
          from ({{ rest_sessions(touched) }})
          where json_type(transcript) = 'ARRAY')
),
exchange_latencies as (  -- the platform's own per-exchange latency, where a REST record was fetched
    select session_id, row_number() over (partition by session_id order by item_pos) as reply_ordinal,
           {{ measure("item->>'$.latency_ms'", 600000) }} as latency_ms
    from rest_items
    where coalesce(item->>'$.user_message', '') <> '' and coalesce(item->>'$.assistant_message', '') <> ''
),
-- Barge-ins (contract section 6): a `message`'s interruption_context describes the assistant turn
-- before it. Messages are tied to transcript turns by what was said, never by position alone: a
-- lost, extra or typed `message`, or a transcript worded differently, must not misplace one.
messages as (
    select session_id, row_number() over (partition by session_id order by received_at, turn_id) as message_key,
           turn_id, received_at, previous_turn_interrupted, words_heard, text_heard, interrupted_assistant_turn_id,
           {{ comparable_text('text') }} as said
    from {{ ref('stg_webhook_messages') }} where {{ sessions_in(touched) }}
),
caller_turns as (
    select session_id, position, spoken_at, previous_assistant_position, next_assistant_position,
           row_number() over (partition by session_id order by position) as caller_ordinal,
           {{ comparable_text('text') }} as said
    from turns where role = 'user'
),
candidates as (  -- a message and a caller turn that say nearly the same, or about the same at the same time
    select m.session_id, m.message_key, u.position,
           {{ text_similarity('m.said', 'u.said') }} as similarity,
           abs(epoch(m.received_at) - epoch(u.spoken_at)) as seconds_apart,
           -- among equally similar turns (a caller who says "yes" twice), the one in the message's
           -- place in the order: a tie-break, never the match itself
           abs(m.message_key - u.caller_ordinal) as ordinal_gap
    from messages m join caller_turns u using (session_id)
),
placed_messages as (  -- each message on its most similar caller turn, and each caller turn keeps one message
    select * from (
        select * from candidates
        where similarity >= 0.6 or (similarity >= 0.3 and seconds_apart <= 5)
        qualify row_number() over (partition by session_id, message_key
                                   order by similarity desc, coalesce(seconds_apart <= 10, false) desc, ordinal_gap asc,
                                            seconds_apart asc nulls last, position asc) = 1)
    qualify row_number() over (partition by session_id, position
                               order by similarity desc, coalesce(seconds_apart <= 10, false) desc, ordinal_gap asc,
                                        message_key asc) = 1
),
replies as (  -- the assistant turn answering each request, by the request's turn_id
    select p.session_id, m.turn_id as request_turn_id, u.next_assistant_position as position
    from placed_messages p
    join messages m using (session_id, message_key)
    join caller_turns u using (session_id, position)
    union all  -- the welcome: session.start's reply, the first assistant turn before any caller turn
    select s.session_id, s.turn_id, w.position
    from {{ ref('stg_webhook_session_starts') }} s
    join (select session_id, min(position) as position from turns where role = 'assistant'
          and previous_role is null group by 1) w using (session_id)
    where {{ sessions_in(touched, 's') }}
),
barge_ins as (
    -- the interrupted turn: the reply to the request `assistant_turn_id` names where it is given
    -- and known, else the assistant turn before the caller turn the message was placed on
    select m.session_id, coalesce(r.position, u.previous_assistant_position) as interrupted_position,
           m.previous_turn_interrupted, m.words_heard, m.text_heard
    from messages m
    left join replies r on r.session_id = m.session_id and r.request_turn_id = m.interrupted_assistant_turn_id
    left join placed_messages p on p.session_id = m.session_id and p.message_key = m.message_key
    left join caller_turns u on u.session_id = p.session_id and u.position = p.position
    where m.previous_turn_interrupted
    qualify interrupted_position is not null
        and row_number() over (partition by m.session_id, interrupted_position order by m.message_key) = 1
),
observable as (  -- barge-ins are observable only where `message` webhooks reach the pipeline
    select distinct session_id from messages
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
    -- a turn dated before its session's start (the docs' own example is a year off): kept, and
    -- left out of response-time metrics
    coalesce(t.offset_ms < 0, false) as spoken_before_start,
    -- null where barge-ins were not observable (no `message` webhook for the session)
    case when t.role = 'assistant' and o.session_id is not null then coalesce(b.previous_turn_interrupted, false)
         end as interrupted,
    case when b.previous_turn_interrupted then b.words_heard end as words_heard,
    case when b.previous_turn_interrupted then b.text_heard end as text_heard,
    -- never a guess: the REST record's per-exchange latency, else null
    x.latency_ms,
    case when t.role = 'assistant' and t.previous_role = 'user' and t.spoken_at is not null
              and t.previous_spoken_at is not null
         then epoch_ms(t.spoken_at) - epoch_ms(t.previous_spoken_at) end as response_gap_ms,
    case when t.spoken_at is not null and t.previous_spoken_at is not null
         then epoch_ms(t.spoken_at) - epoch_ms(t.previous_spoken_at) end as gap_before_ms,
    s.source_loaded_at,
    {{ run_started_literal() }} as built_at
from turns t
join {{ ref('int_session_sources') }} s using (session_id)
left join barge_ins b on b.session_id = t.session_id and b.interrupted_position = t.position
left join observable o on o.session_id = t.session_id
left join exchange_latencies x on x.session_id = t.session_id and x.reply_ordinal = t.reply_ordinal
