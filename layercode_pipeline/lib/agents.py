"""The agents dimension: `GET /v1/agents` kept as versions in `raw.layercode_agents`."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import duckdb

from layercode_pipeline.lib.warehouse import scalar


def store_agents(con: duckdb.DuckDBPyConnection, agents: list[dict[str, Any]]) -> tuple[int, int]:
    """Record one listing: a new row per agent whose record changed (or is new), and the listing
    time on the rows that did not. Returns (new or changed, unchanged)."""
    latest: dict[str, str] = {}
    for agent in agents:  # an agent listed twice: its last entry wins
        latest[agent["id"]] = json.dumps(agent, sort_keys=True, separators=(",", ":"))
    rows = [(agent_id, record, hashlib.sha256(record.encode()).hexdigest()) for agent_id, record in latest.items()]
    con.execute("begin transaction")
    try:
        con.execute("create or replace temp table _agents (agent_id varchar, record json, record_sha256 varchar)")
        if rows:
            con.executemany("insert into _agents values (?, ?::json, ?)", rows)
        unchanged = scalar(
            con,
            """
            update raw.layercode_agents a set last_seen_at = now()
            from _agents t where a.agent_id = t.agent_id and a.record_sha256 = t.record_sha256""",
        )
        changed = scalar(
            con,
            """
            insert into raw.layercode_agents by name
            select t.agent_id, t.record, t.record_sha256, now() as first_seen_at, now() as last_seen_at
            from _agents t anti join raw.layercode_agents a using (agent_id, record_sha256)""",
        )
        con.execute("drop table _agents")
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        raise
    return int(changed), int(unchanged)
