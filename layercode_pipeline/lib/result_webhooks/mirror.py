"""`raw.result_webhook_deliveries` (its DDL with the other raw tables, in `lib/warehouse.py`):
the outbox's deliveries copied into the warehouse, for the mart `marts.fct_webhook_deliveries`
(as of the last `result_webhooks` materialisation)."""

from __future__ import annotations

from datetime import UTC, datetime

import duckdb

from layercode_pipeline.lib.result_webhooks.delivery import redact_url
from layercode_pipeline.lib.result_webhooks.outbox import Outbox

TIMES = ("created_at", "first_attempt_at", "last_attempt_at", "delivered_at", "next_attempt_at")


def mirror_deliveries(con: duckdb.DuckDBPyConnection, outbox: Outbox) -> int:
    """Replace the mirror with the outbox's current state (one transaction)."""
    rows = outbox.deliveries()
    now = datetime.now(UTC)

    def ts(value: float | None) -> datetime | None:
        return datetime.fromtimestamp(value, UTC) if value is not None else None

    columns = (
        "message_id",
        "event_type",
        "session_id",
        "agent_id",
        "endpoint",
        "status",
        "attempts",
        *TIMES,
        "last_status",
        "last_error",
        "mirrored_at",
    )
    values = [
        (
            r["message_id"],
            r["type"],
            r["session_id"],
            r["agent_id"],
            redact_url(r["endpoint_url"]),
            r["status"],
            r["attempts"],
            *(ts(r[k]) for k in TIMES),
            r["last_status"],
            r["last_error"],
            now,
        )
        for r in rows
    ]
    con.execute("begin")
    try:
        con.execute("delete from raw.result_webhook_deliveries")
        if values:
            con.executemany(
                f"insert into raw.result_webhook_deliveries ({', '.join(columns)}) "
                f"values ({', '.join('?' * len(columns))})",
                values,
            )
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        raise
    return len(values)
