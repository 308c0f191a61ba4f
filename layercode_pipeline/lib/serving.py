"""Publish the marts to `serving/analytics.duckdb` for BI tools.

The copy is written to a new file and atomically renamed over the old one. A BI tool that
holds the old file open (read-only) keeps reading its snapshot and never blocks the
pipeline; the next connection it opens sees the new one.
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb

from layercode_pipeline.contract.landing import fsync_dir
from layercode_pipeline.lib.warehouse import DEFAULT_OPEN_TIMEOUT_S, retry_while_locked

SERVING_FILE = "analytics.duckdb"


def publish_marts(warehouse: Path, serving_dir: Path, schema: str = "marts", *,
                 open_timeout_s: float = DEFAULT_OPEN_TIMEOUT_S) -> dict[str, int]:
    serving_dir.mkdir(parents=True, exist_ok=True)
    final = serving_dir / SERVING_FILE
    tmp = serving_dir / f".{SERVING_FILE}.{os.getpid()}.tmp"
    for leftover in (tmp, tmp.with_name(tmp.name + ".wal")):
        leftover.unlink(missing_ok=True)
    counts: dict[str, int] = {}
    con = duckdb.connect(str(tmp))
    try:
        retry_while_locked(lambda: con.execute(f"attach '{warehouse}' as wh (read_only)"), warehouse,
                           timeout_s=open_timeout_s)
        tables = [r[0] for r in con.execute(
            "select table_name from duckdb_tables() where database_name = 'wh' and schema_name = ? order by 1",
            [schema]).fetchall()]
        con.execute(f"create schema if not exists {schema}")
        for table in tables:
            con.execute(f'create table {schema}."{table}" as select * from wh.{schema}."{table}"')
            counts[table] = con.execute(f'select count(*) from {schema}."{table}"').fetchone()[0]
        con.execute("detach wh")
        con.execute("checkpoint")
    finally:
        con.close()
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)
    fsync_dir(serving_dir)
    return counts
