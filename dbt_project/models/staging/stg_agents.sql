-- The agents dimension's source (contract section 5, GET /v1/agents): the latest version of
-- each agent's record, and whether the latest listing still had it.
with versions as (
    select * from {{ source('raw', 'layercode_agents') }}
    qualify row_number() over (partition by agent_id order by first_seen_at desc, last_seen_at desc) = 1
)
select
    agent_id,
    record->>'$.name' as agent_name,
    record->>'$.type' as agent_type,
    record->>'$.agent_template_id' as agent_template_id,
    -- the backend plugin (contract section 6): `agent.webhook` (the customer's webhook receives
    -- `message` and `data`) or `agent.llm` (Layercode's hosted LLM: no customer webhook does);
    -- a legacy `config.endpoint` is a webhook; null while the agent's own record is unknown
    coalesce(
        list_filter(list_transform(coalesce(try_cast(record->'$.config.plugins' as json[]), []),
                                   lambda p: p->>'$.use'),
                    lambda u: u in ('agent.webhook', 'agent.llm'))[1],
        case when record->>'$.config.endpoint' is not null then 'agent.webhook' end) as backend,
    try_cast(record->>'$.created_at' as timestamptz) as created_at,
    try_cast(record->>'$.updated_at' as timestamptz) as updated_at,
    -- the E.164 numbers assigned to the agent (telephony calls reach it on these)
    coalesce(list_filter(
        list_transform(coalesce(try_cast(record->'$.assigned_phone_numbers' as json[]), []),
                       lambda n: n->>'$.phone_number'),
        lambda n: n is not null), []) as phone_numbers,
    last_seen_at = (select max(last_seen_at) from {{ source('raw', 'layercode_agents') }}) as listed_in_latest_fetch,
    first_seen_at as record_changed_at,
    last_seen_at
from versions
