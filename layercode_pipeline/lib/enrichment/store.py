"""`enrichment.session_enrichments`: the enrichment store's DDL, its writer and its cache reads.

Rows are written and read by column name, so adding a column (a new analysis field) never
shifts another one. Old rows stay: a new prompt version, schema version or model adds rows
beside them (see `run.py`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import duckdb

ENRICHMENT_DDL = """
create schema if not exists enrichment;
create table if not exists enrichment.session_enrichments (
    session_id         varchar not null,
    agent_id           varchar,
    cache_key          varchar not null,  -- sha256(transcript, prompt version, schema version, model)
    transcript_sha256  varchar not null,
    provider           varchar not null,  -- openai / offline
    model              varchar not null,
    prompt_version     varchar not null,
    schema_version     varchar not null,
    summary            varchar,
    caller_name        varchar,
    sentiment          varchar,
    sentiment_score    double,
    outcome            varchar,
    topics             json,
    quality_score      integer,
    quality_rationale  varchar,
    compliance_flags   json,
    action_items       json,
    custom_fields      json,
    input_tokens       integer,
    output_tokens      integer,
    cost_usd           double,
    latency_ms         double,
    error              varchar,
    enriched_at        timestamptz not null
);
"""

# the analysis fields a provider answers (JSON ones are lists or objects)
ANSWER_FIELDS = (
    "summary",
    "caller_name",
    "sentiment",
    "sentiment_score",
    "outcome",
    "topics",
    "quality_score",
    "quality_rationale",
    "compliance_flags",
    "action_items",
    "custom_fields",
)
JSON_FIELDS = frozenset({"topics", "compliance_flags", "action_items", "custom_fields"})
# what one call to a provider produced, copied to every session sharing its transcript
CALL_FIELDS = (
    "cache_key",
    "transcript_sha256",
    "provider",
    "model",
    "prompt_version",
    "schema_version",
    *ANSWER_FIELDS,
    "latency_ms",
    "error",
)
COLUMNS = ("session_id", "agent_id", *CALL_FIELDS, "input_tokens", "output_tokens", "cost_usd")


def ensure_enrichment_schema(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(ENRICHMENT_DDL)


def answer_columns(result: Mapping[str, Any] | None) -> dict[str, Any]:
    """A provider's answer as column values (JSON fields serialised)."""
    r = result or {}
    return {
        name: (json.dumps(r[name]) if name in JSON_FIELDS and r.get(name) is not None else r.get(name))
        for name in ANSWER_FIELDS
    }


def write_enrichments(con: duckdb.DuckDBPyConnection, rows: Iterable[Mapping[str, Any]]) -> int:
    """Insert rows given as {column: value} (every column of `COLUMNS`; `enriched_at` is now)."""
    rows = list(rows)
    if not rows:
        return 0
    missing = set(COLUMNS) - set(rows[0])
    if missing:
        raise ValueError(f"enrichment rows lack {sorted(missing)}")
    casts = {name: "?::json" if name in JSON_FIELDS else "?" for name in COLUMNS}
    con.executemany(
        f"insert into enrichment.session_enrichments ({', '.join(COLUMNS)}, enriched_at) "
        f"values ({', '.join(casts[c] for c in COLUMNS)}, now())",
        [[row[c] for c in COLUMNS] for row in rows],
    )
    return len(rows)


def answered_sessions(con: duckdb.DuckDBPyConnection, session_ids: list[str]) -> set[tuple[str, str]]:
    """(session_id, cache_key) of the successful rows of `session_ids`: those need no call."""
    return {
        (r[0], r[1])
        for r in con.execute(
            "select session_id, cache_key from enrichment.session_enrichments "
            "where error is null and session_id in (select unnest($ids))",
            {"ids": session_ids},
        ).fetchall()
    }


def answers_by_cache_key(con: duckdb.DuckDBPyConnection, keys: list[str]) -> dict[str, dict[str, Any]]:
    """The newest successful answer of each of `keys`, as {column: value} of `CALL_FIELDS`: a
    session whose transcript another session already had reuses it with no call."""
    cursor = con.execute(
        f"""
        select {", ".join(CALL_FIELDS)} from enrichment.session_enrichments
        where error is null and cache_key in (select unnest($keys))
        qualify row_number() over (partition by cache_key order by enriched_at desc) = 1""",
        {"keys": keys},
    )
    names = [d[0] for d in cursor.description]
    return {row[0]: dict(zip(names, row)) for row in cursor.fetchall()}
