-- One row per erasure: when, who asked, which selectors (as keyed hashes, never the
-- identifiers), how many sessions, and what was removed from each store.
select
    erasure_id,
    erased_at,
    requested_by,
    selector_kind,
    selector_hashes,
    sessions,
    removed
from {{ source('raw', 'erasure_audit') }}
