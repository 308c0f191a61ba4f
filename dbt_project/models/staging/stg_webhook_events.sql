-- Every landed webhook event that passed validation and names its session. Rows the listener
-- kept with a validation error (a known type missing a field, an identifier of the wrong type)
-- stay in raw.layercode_events for inspection and never reach the marts: every other model
-- reads webhook events through this one.
select
    event_key,
    received_at,
    agent_id,
    event_type,
    session_id,
    turn_id,
    body,
    -- the customer's session metadata: `custom_metadata` (newer payloads, every type) wins over
    -- the legacy `metadata`; only a JSON object counts
    case when json_type(body->'$.custom_metadata') = 'OBJECT' then body->'$.custom_metadata'
         when json_type(body->'$.metadata') = 'OBJECT' then body->'$.metadata' end as metadata,
    case when json_type(body->'$.custom_metadata') = 'OBJECT' then 'custom_metadata'
         when json_type(body->'$.metadata') = 'OBJECT' then 'metadata' end as metadata_field,
    headers,
    ingested_at
from {{ source('raw', 'layercode_events') }}
where validation_error is null and session_id is not null
