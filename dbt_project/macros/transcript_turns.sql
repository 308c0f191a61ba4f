{# One row per transcript turn from either transcript form; see int_transcript_turns.sql. #}
{% macro transcript_turns(session_filter=none) %}
{# The items are unnested in the select list, zipped with their positions: linear in the
   number of turns. A lateral `from t, unnest(...)` re-extracted the array per row (turns x
   transcript size: 50,000 turns ran out of disk). #}
with webhook_lists as (
    select e.session_id, e.started_at, json_extract(e.transcript, '$[*]') as items
    from ({{ session_ends(session_filter) }}) e
    where json_type(e.transcript) = 'ARRAY'
),
webhook_items as (
    select session_id, started_at, unnest(range(1, len(items) + 1)) as item_pos, unnest(items) as item
    from webhook_lists
),
webhook_turns as (
    select
        session_id,
        item_pos as sort_1,
        0 as sort_2,
        -- one role vocabulary: anything but user/assistant (a missing role, a "system" or
        -- "tool" item) is 'unknown', so a new role never fails the accepted-values test
        case when item->>'$.role' in ('user', 'assistant') then item->>'$.role' else 'unknown' end as role,
        item->>'$.text' as text,
        {{ transcript_ts("item->'$.timestamp'") }} as spoken_at,
        started_at,
        'webhook' as transcript_source
    from webhook_items
),
rest_lists as (
    select r.session_id, r.started_at, json_extract(r.transcript, '$[*]') as items
    from ({{ rest_sessions(session_filter) }}) r
    where json_type(r.transcript) = 'ARRAY'
      and r.session_id not in (select session_id from webhook_lists)  -- session.end's transcript wins
),
rest_items as (
    select session_id, started_at, unnest(range(1, len(items) + 1)) as item_pos, unnest(items) as item
    from rest_lists
),
rest_turns as (
    -- a REST entry in the documented shape is one exchange: a caller turn and its reply
    select session_id, item_pos as sort_1, 0 as sort_2, 'user' as role, item->>'$.user_message' as text,
           {{ transcript_ts("item->'$.timestamp'") }} as spoken_at, started_at, 'rest' as transcript_source
    from rest_items where coalesce(item->>'$.user_message', '') <> ''
    union all
    select session_id, item_pos, 1, 'assistant', item->>'$.assistant_message',
           {{ transcript_ts("item->'$.timestamp'") }}
               + case when coalesce(item->>'$.user_message', '') <> ''
                      then coalesce(try(to_milliseconds(try_cast(item->>'$.latency_ms' as double)::bigint)),
                                    interval 0 second)
                      else interval 0 second end,
           started_at, 'rest'
    from rest_items where coalesce(item->>'$.assistant_message', '') <> ''
    union all
    -- a REST entry shaped as one published API profile describes ({role, text, timestamp}, contract
    -- section 6) is one utterance, as in session.end; other shapes give no turn and are flagged
    -- by the backfill's no_rest_shape_drift check
    select session_id, item_pos, 0,
           case when item->>'$.role' in ('user', 'assistant') then item->>'$.role' else 'unknown' end,
           item->>'$.text', {{ transcript_ts("item->'$.timestamp'") }}, started_at, 'rest'
    from rest_items
    where item->>'$.user_message' is null and item->>'$.assistant_message' is null
      and coalesce(item->>'$.text', '') <> ''
),
turns as (
    select * from webhook_turns
    union all
    select * from rest_turns
)
select
    session_id || ':' || lpad(cast(row_number() over (partition by session_id order by sort_1, sort_2) as varchar), 6, '0') as turn_key,
    session_id,
    row_number() over (partition by session_id order by sort_1, sort_2) as position,
    role,
    text,
    {{ word_count('text') }} as words,
    spoken_at,
    case when spoken_at is not null and started_at is not null
         then epoch_ms(spoken_at) - epoch_ms(started_at) end as offset_ms,
    transcript_source
from turns
{% endmacro %}
