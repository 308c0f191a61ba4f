-- One row per result webhook message and endpoint: what reached the customer's product, when,
-- and what is still being retried or was dead-lettered.
select
    d.message_id,
    d.event_type,
    d.session_id,
    d.agent_id,
    a.agent_name,
    d.endpoint,
    d.status,
    d.attempts,
    d.created_at,
    d.first_attempt_at,
    d.last_attempt_at,
    d.delivered_at,
    d.next_attempt_at,
    d.last_status,
    d.last_error,
    case when d.delivered_at is not null then epoch_ms(d.delivered_at) - epoch_ms(d.created_at) end / 1000.0
        as delivery_latency_s
from {{ ref('stg_result_webhook_deliveries') }} d
left join {{ ref('stg_agents') }} a using (agent_id)
