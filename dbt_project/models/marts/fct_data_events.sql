-- One row per `data` event (contract section 5): the structured JSON a caller's web client sent
-- during a call (form submissions, button clicks), by session and caller turn.
select
    d.event_key as data_event_key,
    d.session_id,
    d.agent_id,
    coalesce(d.conversation_id, s.conversation_id) as conversation_id,
    d.turn_id,
    d.data,
    d.received_at
from {{ ref('stg_webhook_data') }} d
left join {{ ref('fct_sessions') }} s using (session_id)
