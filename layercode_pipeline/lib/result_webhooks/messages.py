"""The outbound events' bodies, built from the warehouse the moment an analysis exists.

Body: `{"type", "timestamp", "schema_version", "data"}`. The session facts come from the dbt
staging views (one definition of how a payload is read, the same the marts use), not from
the marts: a message must not wait for `dbt build`. Message ids are derived from what the
message says (the session and the analysis' cache key, or the recording's checksum), so
enqueueing the same result twice is one message, and a re-analysis is a new one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import duckdb
import orjson

SCHEMA_VERSION = 1
CALL_ANALYZED = "call.analyzed"
CALL_RECORDING_READY = "call.recording_ready"
CALL_ERASED = "call.erased"

# the staging views the facts are read from (dbt creates them on its first build)
FACT_VIEWS = (
    "stg_webhook_events",
    "stg_webhook_session_ends",
    "stg_rest_sessions",
    "stg_webhook_messages",
    "stg_webhook_session_updates",
    "stg_recordings",
    "stg_agents",
)


@dataclass(frozen=True)
class Message:
    id: str
    type: str
    session_id: str
    agent_id: str | None
    body: bytes  # the exact bytes signed and sent, the same on every attempt

    @staticmethod
    def id_for(event_type: str, key_parts: tuple[str, ...]) -> str:
        """The message id of `build(event_type, key_parts, ...)`: derived from what it says."""
        return "msg_" + hashlib.sha256(orjson.dumps([event_type, *key_parts])).hexdigest()[:32]

    @classmethod
    def build(
        cls, event_type: str, key_parts: tuple[str, ...], data: dict[str, Any], created_at: datetime | None = None
    ) -> Message:
        msg_id = cls.id_for(event_type, key_parts)
        body = orjson.dumps(
            {
                "type": event_type,
                "timestamp": (created_at or datetime.now(UTC)).isoformat(),
                "schema_version": SCHEMA_VERSION,
                "data": data,
            }
        )
        return cls(msg_id, event_type, data["session_id"], data.get("agent_id"), body)


def facts_ready(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether dbt has created the staging views (not yet on a fresh warehouse)."""
    have = {
        r[0]
        for r in con.execute(
            "select table_name from information_schema.tables where table_schema = 'staging'"
        ).fetchall()
    }
    return set(FACT_VIEWS) <= have


FACTS_SQL = """
with ids as (select unnest(?::varchar[]) as session_id),
ev as (
    select session_id, min(agent_id) as agent_id, min(body->>'$.conversation_id') as conversation_id,
           min(received_at) as first_seen_at,
           first(metadata order by metadata_field = 'custom_metadata' desc, received_at)
               filter (where metadata is not null) as metadata,
           count(*) filter (where event_type = 'message') as messages
    from staging.stg_webhook_events where session_id in (select session_id from ids) group by 1
),
ends as (select * from staging.stg_webhook_session_ends where session_id in (select session_id from ids)),
rest as (select * from staging.stg_rest_sessions where session_id in (select session_id from ids)),
upd as (select * from staging.stg_webhook_session_updates where session_id in (select session_id from ids)),
recs as (select * from staging.stg_recordings where session_id in (select session_id from ids)),
barge as (
    select session_id, count(*) filter (where previous_turn_interrupted) as interruptions
    from staging.stg_webhook_messages where session_id in (select session_id from ids) group by 1
),
exch as (  -- the REST record's per-exchange latency (interrupted replies are not told apart here)
    select session_id, quantile_cont(lat, 0.5) as p50, quantile_cont(lat, 0.95) as p95
    from (select session_id, try_cast(unnest(json_extract(transcript, '$[*].latency_ms'))->>'$' as double) as lat
          from rest where json_type(transcript) = 'ARRAY')
    where lat between 0 and 600000 group by 1
)
select ids.session_id,
       coalesce(rest.agent_id, ends.agent_id, ev.agent_id) as agent_id,
       ag.agent_name,
       coalesce(rest.conversation_id, ends.conversation_id, ev.conversation_id) as conversation_id,
       coalesce(rest.started_at, ends.started_at) as started_at,
       coalesce(rest.ended_at, ends.ended_at) as ended_at,
       coalesce(rest.duration_ms, ends.duration_ms) as duration_ms,
       rest.latency_ms as latency_ms,
       case when json_type(ends.transcript) = 'ARRAY' then json_array_length(ends.transcript)
            when json_type(rest.transcript) = 'ARRAY' then  -- one item per exchange: a caller and an agent turn
                len(list_filter(json_extract_string(rest.transcript, '$[*].user_message'), lambda x: coalesce(x, '') <> ''))
                + len(list_filter(json_extract_string(rest.transcript, '$[*].assistant_message'),
                                  lambda x: coalesce(x, '') <> ''))
                -- entries in the {role, text} shape (contract section 6) are one turn each
                + len(list_filter(json_extract_string(rest.transcript, '$[*].text'), lambda x: coalesce(x, '') <> ''))
       end as turns,
       ev.messages > 0 as barge_ins_observable,
       case when ev.messages > 0 then coalesce(barge.interruptions, 0) end as interruptions,
       exch.p50 as turn_latency_ms_p50, exch.p95 as turn_latency_ms_p95,
       case when recs.download_status = 'downloaded' then 'completed'
            when upd.recording_status in ('completed', 'failed') then upd.recording_status
            when ends.recording_setting = 'disabled' then 'disabled'
            when rest.recording_status in ('completed', 'in_progress', 'not_available') then rest.recording_status
            when ends.recording_setting = 'enabled' then 'in_progress'
            else 'unknown' end as recording_state,
       coalesce(ev.metadata, rest.metadata)::varchar as metadata,
       coalesce(ends.from_phone_number, rest.from_phone_number) as from_phone_number,
       coalesce(ends.to_phone_number, rest.to_phone_number) as to_phone_number
from ids
left join ev using (session_id)
left join ends using (session_id)
left join rest using (session_id)
left join upd using (session_id)
left join recs using (session_id)
left join barge using (session_id)
left join exch using (session_id)
left join staging.stg_agents ag on ag.agent_id = coalesce(rest.agent_id, ends.agent_id, ev.agent_id)
"""


def session_facts(con: duckdb.DuckDBPyConnection, session_ids: list[str]) -> dict[str, dict[str, Any]]:
    if not session_ids:
        return {}
    cur = con.execute(FACTS_SQL, [session_ids])
    names = [d[0] for d in cur.description]
    out = {}
    for row in cur.fetchall():
        rec = dict(zip(names, row))
        for key in ("started_at", "ended_at"):
            rec[key] = rec[key].isoformat() if rec[key] is not None else None
        for key in ("duration_ms", "latency_ms", "turn_latency_ms_p50", "turn_latency_ms_p95"):
            if rec[key] is not None:
                rec[key] = round(float(rec[key]), 1)
        rec["metadata"] = orjson.loads(rec["metadata"]) if rec["metadata"] else None
        out[rec["session_id"]] = rec
    return out


ANALYSES_SQL = """
select session_id, agent_id, cache_key, provider, model, prompt_version, schema_version, summary, caller_name,
       sentiment, sentiment_score, outcome, topics::varchar as topics, quality_score, quality_rationale,
       compliance_flags::varchar as compliance_flags, action_items::varchar as action_items,
       custom_fields::varchar as custom_fields, enriched_at
from enrichment.session_enrichments
where error is null and enriched_at >= ?
order by enriched_at, session_id
"""


def _json(text: str | None) -> Any:
    return orjson.loads(text) if text else None


def analysis_object(row: Mapping[str, Any], analyzed_at: datetime) -> dict[str, Any]:
    """The `analysis` object of `call.analyzed`, from an enrichment row (JSON fields as text
    from the warehouse, or already decoded): the warehouse path and the express path both
    build it here."""

    def decoded(name: str, empty: Any) -> Any:
        value = row.get(name)
        return _json(value) or empty if isinstance(value, str) or value is None else value

    return {
        "summary": row.get("summary"),
        "caller_name": row.get("caller_name"),
        "sentiment": row.get("sentiment"),
        "sentiment_score": row.get("sentiment_score"),
        "outcome": row.get("outcome"),
        "topics": decoded("topics", []),
        "quality_score": row.get("quality_score"),
        "quality_rationale": row.get("quality_rationale"),
        "compliance_flags": decoded("compliance_flags", []),
        "action_items": decoded("action_items", []),
        "custom_fields": decoded("custom_fields", {}),
        "provider": row["provider"],
        "model": row["model"],
        "prompt_version": row["prompt_version"],
        "schema_version": row["schema_version"],
        "analyzed_at": analyzed_at.isoformat(),
    }


def analyzed_messages(con: duckdb.DuckDBPyConnection, since: datetime) -> tuple[list[Message], datetime | None]:
    """`call.analyzed` for every successful analysis written at or after `since`, and the newest
    such time (the next high-water mark). A session analysed again under another prompt
    version or model gets a new message; the same analysis is always the same message id."""
    cursor = con.execute(ANALYSES_SQL, [since])
    names = [d[0] for d in cursor.description]
    rows = [dict(zip(names, r)) for r in cursor.fetchall()]
    if not rows:
        return [], None
    facts = session_facts(con, sorted({r["session_id"] for r in rows}))
    messages = []
    for row in rows:
        sid = row["session_id"]
        fact = dict(facts.get(sid) or {"session_id": sid})
        fact["agent_id"] = fact.get("agent_id") or row["agent_id"]
        fact["analysis"] = analysis_object(row, row["enriched_at"])
        messages.append(Message.build(CALL_ANALYZED, (sid, row["cache_key"]), fact))
    return messages, max(r["enriched_at"] for r in rows)


RECORDINGS_SQL = """
select session_id, agent_id, path, bytes, sha256, sample_rate, channels, encoding, duration_s, fetched_at
from raw.layercode_recordings
where status = 'downloaded' and fetched_at >= ?
order by fetched_at, session_id
"""


def recording_messages(con: duckdb.DuckDBPyConnection, since: datetime) -> tuple[list[Message], datetime | None]:
    """`call.recording_ready` for every WAV kept at or after `since`."""
    have = {
        r[0]
        for r in con.execute("select table_name from information_schema.tables where table_schema = 'raw'").fetchall()
    }
    if "layercode_recordings" not in have:
        return [], None
    rows = con.execute(RECORDINGS_SQL, [since]).fetchall()
    if not rows:
        return [], None
    facts = session_facts(con, sorted({r[0] for r in rows})) if facts_ready(con) else {}
    messages = []
    for sid, agent_id, path, size, sha, rate, channels, encoding, duration, fetched_at in rows:
        fact = facts.get(sid) or {}
        data = {
            "session_id": sid,
            "conversation_id": fact.get("conversation_id"),
            "agent_id": agent_id,
            "agent_name": fact.get("agent_name"),
            "started_at": fact.get("started_at"),
            "ended_at": fact.get("ended_at"),
            "duration_ms": fact.get("duration_ms"),
            "recording": {
                "uri": path,
                "format": "wav",
                "encoding": encoding,
                "sample_rate": rate,
                "channels": channels,
                "duration_s": duration,
                "bytes": size,
                "sha256": sha,
                "kept_at": fetched_at.isoformat(),
            },
        }
        messages.append(Message.build(CALL_RECORDING_READY, (sid, sha or path), data))
    return messages, max(r[-1] for r in rows)


def erased_message(session_id: str, agent_id: str | None, erased_at: datetime) -> Message:
    """`call.erased`: receivers delete their copy of the session."""
    return Message.build(
        CALL_ERASED, (session_id,), {"session_id": session_id, "agent_id": agent_id, "erased_at": erased_at.isoformat()}
    )
