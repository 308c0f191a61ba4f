-- `message`: the caller's transcribed words, and `interruption_context` (contract section 5),
-- which describes the immediately previous assistant turn: whether the caller barged in, how
-- many of its words were heard, and that text.
select
    session_id,
    agent_id,
    body->>'$.conversation_id' as conversation_id,
    turn_id,
    body->>'$.text' as text,
    try_cast(body->>'$.interruption_context.previous_turn_interrupted' as boolean) as previous_turn_interrupted,
    {{ measure("body->>'$.interruption_context.words_heard'", 100000) }} as words_heard,
    body->>'$.interruption_context.text_heard' as text_heard,
    body->>'$.interruption_context.assistant_turn_id' as interrupted_assistant_turn_id,
    received_at,
    ingested_at
from {{ ref('stg_webhook_events') }}
where event_type = 'message'
