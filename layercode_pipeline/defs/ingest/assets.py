"""Landed webhook segments -> `raw.layercode_events`."""

import json
import os
import time

import dagster as dg
import duckdb

from layercode_pipeline.contract.events import Drift, payload_drift, summarise_drift
from layercode_pipeline.defs.dbt.project import column_schema, source_node
from layercode_pipeline.defs.freshness import FRESHNESS
from layercode_pipeline.defs.resources import WAREHOUSE_POOL, StorageResource
from layercode_pipeline.landing.segments import iter_sealed_segments, partition_mtimes
from layercode_pipeline.lib.ingest import ingest_landing, ingest_object_landing, newest_object_ns
from layercode_pipeline.lib.warehouse import RAW_DDL, scalar

RAW_EVENTS = dg.AssetKey("raw_layercode_events")
# materialisation metadata: segments sealed before this time (ns since the epoch) are ingested
HIGH_WATER_KEY = "landing_high_water_ns"


def _preview(con) -> dg.MetadataValue:
    rows = con.execute("""
        select received_at, agent_id, event_type, session_id, turn_id from raw.layercode_events
        order by received_at desc limit 5""").fetchall()
    header = "| received_at | agent_id | event_type | session_id | turn_id |\n|---|---|---|---|---|\n"
    return dg.MetadataValue.md(header + "\n".join("| " + " | ".join(str(v) for v in r) + " |" for r in rows))


# Bad input is isolated, never fatal: the run goes on, and these checks (warnings) say what
# was set aside in this run, with examples, where the UI shows it beside the asset.
CHECK_NO_REJECTS = dg.AssetCheckSpec(
    "no_rejected_lines",
    asset=RAW_EVENTS,
    description="Every line of the segments ingested in this run was a valid envelope (the others are in "
    "raw.layercode_rejects with file, line number and reason).",
)
CHECK_NO_INVALID = dg.AssetCheckSpec(
    "no_invalid_events",
    asset=RAW_EVENTS,
    description="No event ingested in this run failed validation (those stay in raw.layercode_events with "
    "validation_error set, and are kept out of the marts).",
)
CHECK_NO_DRIFT = dg.AssetCheckSpec(
    "no_payload_drift",
    asset=RAW_EVENTS,
    description="Every field, value type and event type in the payloads ingested in this run is one the wire "
    "contract (layercode_pipeline/contract/events.py) describes. A failure lists what is new, with "
    "counts and example sessions: Layercode changed its payloads, so the contract and the models "
    "should follow.",
)
# payloads read per run for the drift check (the newest first): enough to see any change
DRIFT_SAMPLE = 20_000


def payload_drift_summary(con, run_started) -> tuple[int, list[dict]]:
    """Drift in the payloads ingested since `run_started`: events with drift, and one row per
    (event type, path, kind, type) with its count and up to three example sessions."""
    rows = con.execute(
        "select event_type, session_id, body from raw.layercode_events where ingested_at >= ? "
        "order by ingested_at desc limit ?",
        [run_started, DRIFT_SAMPLE],
    ).fetchall()

    def drifts():
        for event_type, session_id, body in rows:
            try:
                yield session_id, payload_drift(event_type, json.loads(body)) if body is not None else []
            except ValueError:
                continue  # not JSON: a reject, reported by no_rejected_lines
            except RecursionError:  # nested past Python's limit (a 1,000-deep custom_metadata): named, not fatal
                yield session_id, [Drift(event_type, "body", "nested_too_deep", "object")]

    return summarise_drift(drifts())


def _examples(con, sql: str, params: list) -> dg.MetadataValue:
    return dg.MetadataValue.json(
        [dict(zip(("what", "why"), map(str, row))) for row in con.execute(sql, params).fetchall()]
    )


def raw_events_schema() -> dg.TableSchema:
    """raw.layercode_events' columns, typed by the warehouse's DDL (in an in-memory DuckDB) and
    described by the dbt sources' YAML: shown in the UI before the first run."""
    con = duckdb.connect()
    try:
        con.execute(RAW_DDL)
        return column_schema(con, "raw", "layercode_events", source_node("raw", "layercode_events"))
    finally:
        con.close()


@dg.asset(
    key=RAW_EVENTS,
    group_name="ingest",
    pool=WAREHOUSE_POOL,
    kinds={"duckdb"},
    check_specs=[CHECK_NO_REJECTS, CHECK_NO_INVALID, CHECK_NO_DRIFT],
    freshness_policy=FRESHNESS,
    metadata={"dagster/column_schema": raw_events_schema()},
    description="Every distinct webhook event the listener landed (table raw.layercode_events). Reads only "
    "sealed segments not yet in raw.layercode_ingested_files; rows and manifest commit together.",
)
def raw_layercode_events(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
    with storage.connect() as con:
        run_started = scalar(con, "select now()")
        # everything sealed before this instant is in this run's listing: the landing sensor
        # asks for a run only while something newer exists (or this run failed)
        high_water_ns = time.time_ns()
        # said at once, not at the end: the landing sensor reads it to know that this run has
        # listed (segments sealed later need another run; earlier ones are this run's)
        context.log_event(
            dg.AssetObservation(RAW_EVENTS, metadata={HIGH_WATER_KEY: dg.MetadataValue.int(high_water_ns)})
        )
        started = time.perf_counter()
        landing = storage.object_landing
        if landing is not None:  # every listener replica lands into the bucket
            result = ingest_object_landing(con, landing, scratch_dir=storage.paths.data_dir / ".ingest-scratch")
        else:
            result = ingest_landing(con, storage.paths.landing)
        seconds = time.perf_counter() - started
        total = scalar(con, "select count(*) from raw.layercode_events")
        rejects_total = scalar(con, "select count(*) from raw.layercode_rejects")
        invalid = scalar(
            con,
            "select count(*) from raw.layercode_events where ingested_at >= ? and validation_error is not null",
            [run_started],
        )
        reject_examples = _examples(
            con,
            "select source_file || ':' || coalesce(line_number::varchar, '-'), reason "
            "from raw.layercode_rejects where rejected_at >= ? limit 5",
            [run_started],
        )
        invalid_examples = _examples(
            con,
            "select event_type || ' ' || coalesce(session_id, '?'), validation_error "
            "from raw.layercode_events where ingested_at >= ? and validation_error "
            "is not null limit 5",
            [run_started],
        )
        preview = _preview(con)
        # the raw table's columns, typed and described in the UI as the marts' are
        columns = column_schema(con, "raw", "layercode_events", source_node("raw", "layercode_events"))
        drifting, drift = payload_drift_summary(con, run_started)
    if drift:
        context.log.warning(
            f"payload drift: {drifting} events carry what the contract does not know, e.g. "
            + "; ".join(f"{d['event_type']} {d['path']} ({d['kind']}, {d['json_type']})" for d in drift[:3])
        )
    if result.rejects:
        context.log.warning(f"{result.rejects} unparseable lines recorded in raw.layercode_rejects")
    checks = [
        dg.AssetCheckResult(
            check_name=CHECK_NO_REJECTS.name,
            passed=result.rejects == 0,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"rejects": result.rejects, "examples": reject_examples},
        ),
        dg.AssetCheckResult(
            check_name=CHECK_NO_INVALID.name,
            passed=invalid == 0,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"invalid_events": invalid, "examples": invalid_examples},
        ),
        dg.AssetCheckResult(
            check_name=CHECK_NO_DRIFT.name,
            passed=not drift,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"events_with_drift": drifting, "new_in_payloads": dg.MetadataValue.json(drift[:20])},
        ),
    ]
    return dg.MaterializeResult(
        check_results=checks,
        metadata={
            HIGH_WATER_KEY: dg.MetadataValue.int(high_water_ns),
            "new_files": result.files,
            "ingest_seconds": round(seconds, 3),
            "new_bytes": dg.MetadataValue.int(result.bytes),
            "lines_read": result.rows,
            "rows_inserted": result.inserted,
            "duplicates_dropped": result.duplicates - result.erased,
            "erased_events_dropped": result.erased,
            "rejects": result.rejects,
            "orphan_segments_sealed": result.recovered_segments,
            "partitions_listed": result.partitions_listed,
            "dagster/row_count": total,
            "dagster/column_schema": columns,
            "rejects_total": rejects_total,
            "preview": preview,
        },
    )


def newest_sealed_ctime(storage: StorageResource, since_ns: int = 0) -> int:
    """The newest ctime of a sealed segment, looking only in partitions changed since
    `since_ns`; `since_ns` if none is newer. The seal is a rename, which sets the segment's
    ctime and its directory's mtime together, so a segment sealed late (by a slow writer or
    by orphan recovery) still looks new, and a directory untouched since `since_ns` cannot
    hold one: a tick costs one stat per partition plus a listing of the changed ones. On object
    storage: the newest object's last-modified time in the recent hour prefixes."""
    if storage.object_landing is not None:
        return newest_object_ns(storage.object_landing, since_ns)
    changed = [hour_dir for hour_dir, mtime_ns in partition_mtimes(storage.paths.landing) if mtime_ns >= since_ns]
    newest = since_ns
    for path in iter_sealed_segments(storage.paths.landing, changed):
        try:
            newest = max(newest, os.stat(path).st_ctime_ns)
        except FileNotFoundError:
            continue
    return newest
