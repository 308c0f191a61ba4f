"""Publish the marts for BI tools: `serving/analytics.duckdb`, and one Parquet file per mart.

The DuckDB copy is written to a new file and atomically renamed over the old one. A BI tool
that holds the old file open (read-only) keeps reading its snapshot and never blocks the
pipeline; the next connection it opens sees the new one.

It is written in an older storage format (`SERVING_STORAGE_VERSION`): DBeaver, Metabase,
Superset, Evidence and most notebooks bundle their own DuckDB, often a 1.x, which cannot
open a file in DuckDB 2.0's format. The warehouse itself stays in the current format. Tools
that speak no DuckDB read `serving/parquet/<mart>.parquet` (each file replaced atomically).
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb

from layercode_pipeline.landing.durable import fsync_dir, fsync_file
from layercode_pipeline.lib.warehouse import Warehouse, scalar, sql_string

SERVING_FILE = "analytics.duckdb"
PARQUET_DIR = "parquet"
# The oldest DuckDB that can open the serving copy: 1.1 (DuckDB 1.1.0 through 2.x read it).
SERVING_STORAGE_VERSION = "v1.1.0"


def publish_serving_copy(warehouse: Warehouse, serving_dir: Path, schema: str = "marts") -> dict[str, int]:
    """Copy every table of `schema` of the warehouse (a local file or MotherDuck, attached
    read-only) into the serving file and its Parquet files. Returns the row count per table."""
    serving_dir.mkdir(parents=True, exist_ok=True)
    parquet_dir = serving_dir / PARQUET_DIR
    parquet_dir.mkdir(exist_ok=True)
    final = serving_dir / SERVING_FILE
    tmp = serving_dir / f".{SERVING_FILE}.{os.getpid()}.tmp"
    for leftover in (tmp, tmp.with_name(tmp.name + ".wal")):
        leftover.unlink(missing_ok=True)
    counts: dict[str, int] = {}
    con = duckdb.connect()
    try:
        con.execute(f"attach {sql_string(tmp)} as serving (storage_version '{SERVING_STORAGE_VERSION}')")
        warehouse.attach(con, "wh")
        tables = [
            r[0]
            for r in con.execute(
                "select table_name from duckdb_tables() where database_name = 'wh' and schema_name = ? order by 1",
                [schema],
            ).fetchall()
        ]
        con.execute(f"create schema serving.{schema}")
        for table in tables:
            con.execute(f'create table serving.{schema}."{table}" as select * from wh.{schema}."{table}"')
            counts[table] = scalar(con, f'select count(*) from serving.{schema}."{table}"')
            part = parquet_dir / f".{table}.parquet.{os.getpid()}.tmp"
            con.execute(
                f"copy (select {_parquet_columns(con, schema, table)} from serving.{schema}.{_ident(table)}) "
                f"to {sql_string(part)} (format parquet, compression zstd)"
            )
            fsync_file(part)
            os.replace(part, parquet_dir / f"{table}.parquet")
        con.execute("detach wh")
        con.execute("detach serving")
    finally:
        con.close()
    for stale in parquet_dir.glob("*.parquet"):  # a mart that no longer exists
        if stale.stem not in counts:
            stale.unlink()
    fsync_dir(parquet_dir)
    fsync_file(tmp)
    os.replace(tmp, final)
    fsync_dir(serving_dir)
    return counts


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _parquet_columns(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> str:
    """The select list for a mart's Parquet file: JSON columns as UTF-8 strings. DuckDB writes
    its JSON type as a byte array with a JSON annotation, which polars and older pyarrow read
    as Binary; a string column is read as text everywhere."""
    columns = con.execute(
        "select column_name, data_type from duckdb_columns() where database_name = 'serving' "
        "and schema_name = ? and table_name = ? order by column_index",
        [schema, table],
    ).fetchall()
    return ", ".join(
        f"{_ident(name)}::varchar as {_ident(name)}" if data_type == "JSON" else _ident(name)
        for name, data_type in columns
    )
