"""Which sessions need their REST record, fetching them, and storing them as they came."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import duckdb

from layercode_pipeline.contract.minimise import Minimisation
from layercode_pipeline.lib.layercode_client import LayercodeClient, SessionFetch

NEEDS_DETAILS_SQL = """
with seen as (
    select agent_id, session_id,
           max(received_at) as last_seen,
           bool_or(event_type = 'session.end') as has_end,
           max(case when event_type = 'session.end' then body->>'$.recording_status' end) as end_recording,
           bool_or(event_type = 'session.update' and body->>'$.recording_status' in ('completed', 'failed')) as has_update
    from raw.layercode_events
    where session_id is not null and agent_id is not null and validation_error is null
    group by all
), latest as (
    select agent_id, session_id, http_status, record->>'$.recording_status' as rest_recording,
           record->>'$.ended_at' as rest_ended_at
    from raw.layercode_session_details
    qualify row_number() over (partition by agent_id, session_id order by fetched_at desc) = 1
)
select s.agent_id, s.session_id,
       case when not s.has_end and (l.session_id is null or l.rest_ended_at is null) then 'no_session_end'
            else 'recording_unresolved' end as reason
from seen s
left join latest l using (agent_id, session_id)
where s.last_seen <= now() - to_minutes(cast(? as bigint))
  and coalesce(l.http_status, 0) <> 404          -- not found: only asked again when a user asks
  and (
        -- the end of the call never arrived and we hold no final record of it
        (not s.has_end and (l.session_id is null or l.rest_ended_at is null))
        -- the org records, no session.update said how it went, and the REST API has not said either
     or (not s.has_update and l.rest_recording = 'in_progress')
     or (not s.has_update and s.end_recording = 'enabled' and l.session_id is null)
  )
order by s.agent_id, s.session_id
"""

# One REST record per agent whose session.end `latency` was never compared with one: the unit of
# that field is undocumented (contract section 5), and fct_sessions learns it from the pair.
# An agent is probed once (a probe that answered, even 404, is not repeated; one that failed
# is in raw.layercode_api_errors and asked again next run).
LATENCY_UNIT_PROBE_SQL = """
with ends as (
    select agent_id, session_id, received_at
    from raw.layercode_events
    where event_type = 'session.end' and validation_error is null and session_id is not null
      and agent_id is not null and try_cast(body->>'$.latency' as double) > 0
), compared as (
    select distinct agent_id
    from ends join raw.layercode_session_details d using (agent_id, session_id)
    where d.http_status = 200 and try_cast(d.record->>'$.latency_ms' as double) > 0
), probed as (
    select distinct agent_id from raw.layercode_session_details where reason = 'latency_unit'
)
select agent_id, arg_max(session_id, received_at) as session_id, 'latency_unit' as reason
from ends
where received_at <= now() - to_minutes(cast(? as bigint))
  and agent_id not in (select agent_id from compared) and agent_id not in (select agent_id from probed)
group by agent_id
order by agent_id
"""


@dataclass(frozen=True)
class DetailRequest:
    agent_id: str
    session_id: str
    reason: str


@dataclass
class DetailOutcome:
    request: DetailRequest
    fetch: SessionFetch | None
    error: str | None = None


def sessions_needing_details(con: duckdb.DuckDBPyConnection, grace_minutes: int) -> list[DetailRequest]:
    """Gaps (no session.end, an unresolved recording), then one latency-unit probe per agent
    that has no session asked for already."""
    gaps = [DetailRequest(*row) for row in con.execute(NEEDS_DETAILS_SQL, [grace_minutes]).fetchall()]
    # an agent with a session.end whose record is fetched anyway is compared through it
    agents_with_gaps = {r.agent_id for r in gaps if r.reason == "recording_unresolved"}
    probes = [
        DetailRequest(*row)
        for row in con.execute(LATENCY_UNIT_PROBE_SQL, [grace_minutes]).fetchall()
        if row[0] not in agents_with_gaps
    ]
    return gaps + probes


async def fetch_details(
    client: LayercodeClient, requests: Iterable[DetailRequest], on_done: Callable[[DetailOutcome], None] | None = None
) -> list[DetailOutcome]:
    """Fetch concurrently (the client's limit applies). One session's failure does not stop
    the others; an auth failure (401) stops everything, since every call would fail."""
    from layercode_pipeline.lib.layercode_client import LayercodeAuthError

    async def one(req: DetailRequest) -> DetailOutcome:
        try:
            outcome = DetailOutcome(req, await client.get_session(req.agent_id, req.session_id))
        except LayercodeAuthError:
            raise
        except Exception as exc:  # noqa: BLE001 - recorded per session, retried next run
            outcome = DetailOutcome(req, None, f"{type(exc).__name__}: {exc}")
        if on_done is not None:
            on_done(outcome)
        return outcome

    return list(await asyncio.gather(*(one(r) for r in requests)))


def store_details(
    con: duckdb.DuckDBPyConnection, outcomes: list[DetailOutcome], minimisation: Minimisation | None = None
) -> tuple[int, int]:
    """Append each answer (200 with its record, or 404) with its fetch time, and each failure
    to raw.layercode_api_errors (the session stays pending and is asked again next run).
    Each record is minimised first (the caller's IP, phone numbers: contract/minimise.py).
    Returns (found, not_found)."""
    if minimisation is not None and minimisation.changes_anything:
        for o in outcomes:
            if o.fetch is not None and isinstance(o.fetch.record, dict):
                minimisation.apply(o.fetch.record)
    rows = [
        (
            o.request.agent_id,
            o.request.session_id,
            o.fetch.status,
            json.dumps(o.fetch.record) if o.fetch.record is not None else None,
            o.request.reason,
        )
        for o in outcomes
        if o.fetch is not None
    ]
    errors = [
        (o.request.agent_id, o.request.session_id, "session_details", o.request.reason, o.error)
        for o in outcomes
        if o.fetch is None and o.error
    ]
    if rows:
        con.executemany("insert into raw.layercode_session_details values (?, ?, ?, ?::json, ?, now())", rows)
        # an erased session's record (asked for by hand, or by a stale plan) is not kept
        con.execute(
            """
            delete from raw.layercode_session_details d
            where d.session_id in (select unnest(?::varchar[])) and exists (
                select 1 from raw.erasure_tombstones t where t.key_hash in (
                    sha256(getvariable('privacy_key') || ':session:' || d.session_id),
                    sha256(getvariable('privacy_key') || ':phone:' || (d.record->>'$.from_phone_number')),
                    sha256(getvariable('privacy_key') || ':phone:' || (d.record->>'$.to_phone_number'))))
            """,
            [[r[1] for r in rows]],
        )
    if errors:
        con.executemany("insert into raw.layercode_api_errors values (?, ?, ?, ?, ?, now())", errors)
    return sum(1 for r in rows if r[2] == 200), sum(1 for r in rows if r[2] == 404)
