"""Publish the marts for BI tools: `serving/analytics.duckdb`, and Parquet files.

`analytics.duckdb` is a link to one of a pair of files (`.analytics-<n>.duckdb`). A publish
updates the other file in place (the rows changed since that file was published), then swaps
the link atomically. A BI tool that holds a file open (read-only) keeps reading its snapshot
and never blocks the pipeline; the next connection it opens sees the new one. If a reader
still holds the other file when a publish comes, the publish starts from a copy of the
current one instead (and the held file leaves the directory; its reader keeps it).

It is written in an older storage format (`SERVING_STORAGE_VERSION`): DBeaver, Metabase,
Superset, Evidence and most notebooks bundle their own DuckDB, often a 1.x, which cannot
open a file in DuckDB 2.0's format. The warehouse itself stays in the current format. Tools
that speak no DuckDB read the Parquet files (each replaced atomically): the large marts as
`serving/parquet/<mart>/<date column>=<YYYY-MM-DD>/part.parquet` (Hive partitions), the others
as `serving/parquet/<mart>.parquet`. They are written after the swap, from the file just
published: DuckDB readers get a publish a second or more sooner than Parquet readers.

A publish costs what changed, not the history (issue 27). The first publish copies every mart.
Later ones replace in the other file of the pair only the rows of the sessions and
conversations the marts rebuilt since that file's publish (their `built_at`), copy the small
marts whole, and rewrite only the Parquet partitions of the days those rows belong to, before
and after. (Copying the whole previous file instead, 600 MB at a million sessions, was most
of a publish.) A mart whose columns changed, or whose row count disagrees afterwards (rows deleted in
the warehouse), is copied whole.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import duckdb

from layercode_pipeline.landing.durable import fsync_dir, fsync_file
from layercode_pipeline.lib.warehouse import Warehouse, scalar, sql_string, warehouse_lock

SERVING_FILE = "analytics.duckdb"
PARQUET_DIR = "parquet"
STATE_FILE = ".publish_state.json"
# present from a publish's swap until its Parquet files are all written (see `_publish`)
PARQUET_PENDING = ".parquet_pending"
# held for a whole publish: one publish at a time, whether or not its caller still holds the
# warehouse (a publish lets the warehouse go before its Parquet files, see `warehouse_read`)
PUBLISH_LOCK = ".publish.lock"
# The oldest DuckDB that can open the serving copy: 1.1 (DuckDB 1.1.0 through 2.x read it).
SERVING_STORAGE_VERSION = "v1.1.0"
# Hive's name for a partition whose value is null (DuckDB, Spark and polars read it as null).
NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"


@dataclass(frozen=True)
class Incremental:
    """A mart published by what changed: its rows are replaced by `key` where `built_at` is
    newer than the last publish, and its Parquet files are split by the date `partition`
    (SQL over the mart, or over `partition_from` joined on `key`)."""

    key: str
    partition_column: str
    partition: str
    partition_from: str | None = None
    # the timestamp the day is taken from (UTC): a range on it lets DuckDB skip the row groups
    # of other days, where the day expression itself reads every row
    day_of: str | None = None


SESSION_DAY = "cast({a}session_date_at at time zone 'UTC' as date)"
INCREMENTAL = {
    "fct_sessions": Incremental("session_id", "session_date", SESSION_DAY, day_of="session_date_at"),
    # a turn's file is its session's day: a session's turns are never split across files
    "fct_turns": Incremental("session_id", "session_date", SESSION_DAY, "fct_sessions", day_of="session_date_at"),
    "fct_recordings": Incremental("session_id", "session_date", SESSION_DAY, day_of="session_date_at"),
    "fct_conversations": Incremental(
        "conversation_id", "started_date", "cast({a}started_at at time zone 'UTC' as date)", day_of="started_at"
    ),
}


@dataclass
class Publication:
    """What one publish did: every mart's row count, whether it was a whole copy, the rows
    copied per mart, and the Parquet partitions (or files) written."""

    counts: dict[str, int] = field(default_factory=dict)
    whole: bool = True
    rows_copied: dict[str, int] = field(default_factory=dict)
    parquet_written: dict[str, list[str]] = field(default_factory=dict)
    file: str = ""  # the file of the pair the link now points to
    in_place: bool = False  # that file was updated in place (no copy of the current one)


def publish_serving_copy(
    warehouse: Warehouse,
    serving_dir: Path,
    schema: str = "marts",
    *,
    warehouse_read: Callable[[], None] | None = None,
) -> Publication:
    """Publish every table of `schema` of the warehouse (a local file or MotherDuck, attached
    read-only) into the serving file and its Parquet files.

    `warehouse_read` is called once the publish has read all it needs of the warehouse and let
    it go: its caller may hand the warehouse to the next writer then. The rest (the Parquet
    files, the checkpoint, the swap) reads only the serving file, and takes a second or more
    at a million sessions that the next run's ingest and build need not wait for."""
    serving_dir.mkdir(parents=True, exist_ok=True)
    with warehouse_lock(serving_dir / PUBLISH_LOCK):
        return _publish(warehouse, serving_dir, schema, warehouse_read)


def _publish(
    warehouse: Warehouse, serving_dir: Path, schema: str, warehouse_read: Callable[[], None] | None
) -> Publication:
    parquet_dir = serving_dir / PARQUET_DIR
    parquet_dir.mkdir(exist_ok=True)
    final = serving_dir / SERVING_FILE
    for leftover in serving_dir.glob(f".{SERVING_FILE}.*.tmp*"):  # a publish that crashed
        leftover.unlink(missing_ok=True)
    files = _read_state(serving_dir / STATE_FILE)
    current = _current_file(final)
    whole = not files or current is None
    target: Path | None = None
    since: dict[str, str] = {}
    in_place = False
    if current is not None and not whole:
        # the other file of the pair, updated in place from its own watermarks: no copy of the
        # history. A reader that still holds it (opened before the last swap) keeps its lock:
        # then a copy of the current file, as before.
        for name, watermarks in files.items():
            spare = serving_dir / name
            if spare != current and spare.exists() and _writable(spare):
                target, since, in_place = spare, watermarks, True
                break
        if target is None:
            since = files.get(current.name, {}) if current.name in files else {}
            if not since:
                whole = True  # a copy with no record of what it holds: start afresh
            else:
                target = _new_file(serving_dir)
                shutil.copyfile(current, target)
    if whole:
        target, since = _new_file(serving_dir), {}
    assert target is not None
    pub = Publication(whole=whole, file=target.name, in_place=in_place)
    new_state: dict[str, str] = {}
    con = duckdb.connect()
    try:
        if whole:
            con.execute(f"attach {sql_string(target)} as serving (storage_version '{SERVING_STORAGE_VERSION}')")
            con.execute(f"create schema serving.{schema}")
        else:
            con.execute(f"attach {sql_string(target)} as serving")
        warehouse.attach(con, "wh")
        tables = [
            r[0]
            for r in con.execute(
                "select table_name from duckdb_tables() where database_name = 'wh' and schema_name = ? order by 1",
                [schema],
            ).fetchall()
        ]
        for dropped in set(_tables(con, "serving", schema)) - set(tables):  # a mart that no longer exists
            con.execute(f"drop table serving.{schema}.{_ident(dropped)}")
        # the days each incremental mart's changed rows had before this publish
        old_days: dict[str, set] = {}
        changed: dict[str, str] = {}  # mart -> the SQL of its changed keys
        for table in tables:
            spec = INCREMENTAL.get(table)
            watermark = since.get(table)
            if spec and watermark and _same_columns(con, schema, table):
                changed[table] = (
                    f"select {spec.key} from wh.{schema}.{_ident(table)} where built_at > '{watermark}'::timestamptz"
                )
                old_days[table] = _days(con, schema, table, spec, changed[table])
        for table in tables:
            target_table = f"serving.{schema}.{_ident(table)}"
            source = f"wh.{schema}.{_ident(table)}"
            if table in changed:
                con.execute(f"delete from {target_table} where {INCREMENTAL[table].key} in ({changed[table]})")
                # the changed keys' rows are exactly those built since (a key's rows are rebuilt
                # together): a constant on `built_at` prunes row groups, a key list would not
                copied = scalar(  # an insert answers with its row count
                    con,
                    f"insert into {target_table} select * from {source} where built_at > '{since[table]}'::timestamptz",
                )
                if scalar(con, f"select count(*) from {target_table}") != scalar(con, f"select count(*) from {source}"):
                    del changed[table]  # rows left the warehouse (an erasure): the whole mart
                else:  # the same keys, as the serving copy now has them (read after the warehouse)
                    changed[table] = (
                        f"select {INCREMENTAL[table].key} from {target_table} "
                        f"where built_at > '{since[table]}'::timestamptz"
                    )
            if table not in changed:
                copied = scalar(con, f"create or replace table {target_table} as select * from {source}")
            pub.rows_copied[table] = copied
            pub.counts[table] = scalar(con, f"select count(*) from {target_table}")
            if table in INCREMENTAL and _has_column(con, "wh", schema, table, "built_at"):
                newest = scalar(con, f"select max(built_at)::varchar from {source}")
                if newest:
                    new_state[table] = newest
        con.execute("detach wh")
        if warehouse_read is not None:
            warehouse_read()
        con.execute("checkpoint serving")  # no write-ahead log left beside the file readers open
        con.execute("detach serving")
    finally:
        con.close()
    fsync_file(target)
    # What each file of the pair holds, written before the swap: watermarks never newer than a
    # file's rows, so a crash anywhere leaves changes to apply again (idempotent), never to miss.
    kept = {} if whole or current is None or current == target else {current.name: files.get(current.name, {})}
    _write_state(serving_dir / STATE_FILE, {**kept, target.name: new_state})
    # The Parquet files follow the swap (DuckDB readers need not wait for them): until they are
    # all written, a marker says so, and a publish that finds it (this one crashed in between)
    # rewrites every Parquet file instead of the changed days.
    pending = serving_dir / PARQUET_PENDING
    parquet_whole = pending.exists()
    pending.touch()
    link = serving_dir / f".{SERVING_FILE}.{os.getpid()}.tmp-link"
    link.unlink(missing_ok=True)
    link.symlink_to(target.name)
    os.replace(link, final)  # readers' next open sees the new file; an open one keeps its own
    fsync_dir(serving_dir)
    # read-only, as a BI tool opens it: readers may open the file now, and share its lock
    con = duckdb.connect()
    try:
        con.execute(f"attach {sql_string(target)} as serving (read_only)")
        for table in tables:
            spec = INCREMENTAL.get(table)
            if spec is None:
                pub.parquet_written[table] = [
                    _write_parquet(
                        con,
                        schema,
                        table,
                        f"select * from serving.{schema}.{_ident(table)}",
                        parquet_dir / f"{table}.parquet",
                    )
                ]
                continue
            (parquet_dir / f"{table}.parquet").unlink(missing_ok=True)  # the layout before partitions
            if table in changed and not parquet_whole:
                days = old_days[table] | _days(con, schema, table, spec, changed[table])
                pub.parquet_written[table] = [
                    _write_partition(con, schema, table, spec, day, parquet_dir) for day in sorted(days, key=str)
                ]
            else:
                pub.parquet_written[table] = _write_all_partitions(con, schema, table, spec, parquet_dir)
    finally:
        con.close()
    for stale in parquet_dir.glob("*.parquet"):  # a mart that no longer exists
        if stale.stem not in pub.counts:
            stale.unlink()
    fsync_dir(parquet_dir)
    pending.unlink()
    fsync_dir(serving_dir)
    for old in serving_dir.glob(f".{Path(SERVING_FILE).stem}-*{Path(SERVING_FILE).suffix}"):
        if old.name not in kept and old != target:
            # an older copy (after a whole publish, the pair's other file too: a forgotten
            # caller's rows are in no file left here); a reader holding one keeps its inode
            old.unlink(missing_ok=True)
            old.with_name(old.name + ".wal").unlink(missing_ok=True)
    return pub


def _new_file(serving_dir: Path) -> Path:
    """A new file of the pair: `.analytics-<ns>.duckdb` (analytics.duckdb links to one of them)."""
    return serving_dir / f".{Path(SERVING_FILE).stem}-{time.time_ns()}{Path(SERVING_FILE).suffix}"


def _current_file(final: Path) -> Path | None:
    """The file readers open now: the link's target (or the one file of the layout before the
    pair, a regular analytics.duckdb: its state is not the pair's, so it is copied once)."""
    if final.is_symlink():
        target = final.parent / os.readlink(final)
        return target if target.exists() else None
    return None


def _writable(path: Path) -> bool:
    """Whether no reader holds the file (DuckDB's own lock: a read-only open takes it shared)."""
    try:
        duckdb.connect(str(path)).close()
    except duckdb.Error:
        return False
    return True


def _read_state(path: Path) -> dict[str, dict[str, str]]:
    """Each file of the pair and the newest `built_at` of each incremental mart it holds."""
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # none, or unreadable: the next publish is a whole one
    files = state.get("files") if isinstance(state, dict) else None
    return files if isinstance(files, dict) else {}  # (the layout before the pair had none)


def _write_state(path: Path, files: dict[str, dict[str, str]]) -> None:
    part = path.with_name(path.name + ".tmp")
    part.write_text(json.dumps({"files": files, "published_at": datetime.now().astimezone().isoformat()}))
    fsync_file(part)
    os.replace(part, path)


def _tables(con: duckdb.DuckDBPyConnection, database: str, schema: str) -> list[str]:
    return [
        r[0]
        for r in con.execute(
            "select table_name from duckdb_tables() where database_name = ? and schema_name = ?", [database, schema]
        ).fetchall()
    ]


def _columns(con: duckdb.DuckDBPyConnection, database: str, schema: str, table: str) -> list[tuple[str, str]]:
    return con.execute(
        "select column_name, data_type from duckdb_columns() where database_name = ? and schema_name = ? "
        "and table_name = ? order by column_index",
        [database, schema, table],
    ).fetchall()


def _has_column(con: duckdb.DuckDBPyConnection, database: str, schema: str, table: str, column: str) -> bool:
    return any(name == column for name, _ in _columns(con, database, schema, table))


def _same_columns(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    return _columns(con, "serving", schema, table) == _columns(con, "wh", schema, table) and _has_column(
        con, "wh", schema, table, "built_at"
    )


def _day_sql(schema: str, table: str, spec: Incremental) -> tuple[str, str]:
    """The day of each row of `table` in the serving copy (the FROM clause and the expression)."""
    if spec.partition_from:
        return (
            f"serving.{schema}.{_ident(table)} t join serving.{schema}.{_ident(spec.partition_from)} p using ({spec.key})",
            spec.partition.format(a="p."),
        )
    return f"serving.{schema}.{_ident(table)} t", spec.partition.format(a="t.")


def _days(con: duckdb.DuckDBPyConnection, schema: str, table: str, spec: Incremental, keys: str | None) -> set:
    """The days (partitions) of the serving copy's rows of `table` with the given keys (a query
    of them), or of all its rows."""
    source, day = _day_sql(schema, table, spec)
    where = f"where t.{spec.key} in ({keys})" if keys else ""
    return {r[0] for r in con.execute(f"select distinct {day} from {source} {where}").fetchall()}


def _partition_dir(parquet_dir: Path, table: str, spec: Incremental, day) -> Path:
    return parquet_dir / table / f"{spec.partition_column}={day if day is not None else NULL_PARTITION}"


def _write_partition(
    con: duckdb.DuckDBPyConnection, schema: str, table: str, spec: Incremental, day, parquet_dir: Path
) -> str:
    """One day's file of a partitioned mart, replaced atomically (removed when the day has no
    rows left)."""
    folder = _partition_dir(parquet_dir, table, spec, day)
    source, day_sql = _day_sql(schema, table, spec)
    match = f"{day_sql} is null" if day is None else f"{day_sql} = '{day}'::date"
    if day is not None and spec.day_of:
        stamp = f"{'p' if spec.partition_from else 't'}.{spec.day_of}"
        match += (
            f" and {stamp} >= timezone('UTC', '{day}'::timestamp)"
            f" and {stamp} < timezone('UTC', '{day}'::timestamp + interval 1 day)"
        )
    rows = scalar(con, f"select count(*) from {source} where {match}")
    if not rows:
        shutil.rmtree(folder, ignore_errors=True)
        return folder.name
    folder.mkdir(parents=True, exist_ok=True)
    _write_parquet(con, schema, table, f"select t.* from {source} where {match}", folder / "part.parquet")
    return folder.name


def _write_all_partitions(
    con: duckdb.DuckDBPyConnection, schema: str, table: str, spec: Incremental, parquet_dir: Path
) -> list[str]:
    """Every day's file of a partitioned mart, in one pass (DuckDB's PARTITION_BY into a scratch
    folder), each then renamed over its old file; days that no longer have rows are removed."""
    folder = parquet_dir / table
    scratch = parquet_dir / f".{table}.{os.getpid()}.tmp"
    shutil.rmtree(scratch, ignore_errors=True)
    source, day_sql = _day_sql(schema, table, spec)
    con.execute(
        f"copy (select {_parquet_columns(con, schema, table, prefix='t.')}, {day_sql} as {spec.partition_column} "
        f"from {source}) to {sql_string(scratch)} "
        f"(format parquet, compression zstd, partition_by ({spec.partition_column}), filename_pattern 'part')"
    )
    written = []
    folder.mkdir(exist_ok=True)
    for made in sorted(scratch.iterdir()):
        value = made.name.split("=", 1)[1]
        name = f"{spec.partition_column}={NULL_PARTITION if value in ('NULL', NULL_PARTITION) else value}"
        (folder / name).mkdir(exist_ok=True)
        files = list(made.glob("*.parquet"))
        fsync_file(files[0])
        os.replace(files[0], folder / name / "part.parquet")
        written.append(name)
    shutil.rmtree(scratch, ignore_errors=True)
    for child in folder.iterdir():
        if child.is_dir() and child.name not in written:
            shutil.rmtree(child, ignore_errors=True)
    return written


def _write_parquet(con: duckdb.DuckDBPyConnection, schema: str, table: str, select: str, path: Path) -> str:
    part = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    con.execute(
        f"copy (select {_parquet_columns(con, schema, table)} from ({select})) "
        f"to {sql_string(part)} (format parquet, compression zstd)"
    )
    fsync_file(part)
    os.replace(part, path)
    return path.name


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _parquet_columns(con: duckdb.DuckDBPyConnection, schema: str, table: str, prefix: str = "") -> str:
    """The select list for a mart's Parquet file: JSON columns as UTF-8 strings. DuckDB writes
    its JSON type as a byte array with a JSON annotation, which polars and older pyarrow read
    as Binary; a string column is read as text everywhere."""
    columns = con.execute(
        "select column_name, data_type from duckdb_columns() where database_name = 'serving' "
        "and schema_name = ? and table_name = ? order by column_index",
        [schema, table],
    ).fetchall()
    return ", ".join(
        f"{prefix}{_ident(name)}::varchar as {_ident(name)}" if data_type == "JSON" else prefix + _ident(name)
        for name, data_type in columns
    )
