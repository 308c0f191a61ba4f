"""Landed webhook segments -> `raw.layercode_events`."""


import os
import time

import dagster as dg

from layercode_pipeline.contract.landing import iter_sealed_segments, partition_mtimes
from layercode_pipeline.defs.resources import WAREHOUSE_POOL, StorageResource
from layercode_pipeline.lib.ingest import ingest_landing

RAW_EVENTS = dg.AssetKey("raw_layercode_events")


def _preview(con) -> dg.MetadataValue:
    rows = con.execute("""
        select received_at, agent_id, event_type, session_id, turn_id from raw.layercode_events
        order by received_at desc limit 5""").fetchall()
    header = "| received_at | agent_id | event_type | session_id | turn_id |\n|---|---|---|---|---|\n"
    return dg.MetadataValue.md(header + "\n".join("| " + " | ".join(str(v) for v in r) + " |" for r in rows))


@dg.asset(
    key=RAW_EVENTS,
    group_name="ingest",
    pool=WAREHOUSE_POOL,
    kinds={"duckdb"},
    description="Every distinct webhook event the listener landed (table raw.layercode_events). Reads only "
                "sealed segments not yet in raw.layercode_ingested_files; rows and manifest commit together.",
)
def raw_layercode_events(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
    with storage.connect() as con:
        started = time.perf_counter()
        result = ingest_landing(con, storage.paths.landing)
        seconds = time.perf_counter() - started
        total = con.execute("select count(*) from raw.layercode_events").fetchone()[0]
        rejects_total = con.execute("select count(*) from raw.layercode_rejects").fetchone()[0]
        preview = _preview(con)
    if result.rejects:
        context.log.warning(f"{result.rejects} unparseable lines recorded in raw.layercode_rejects")
    return dg.MaterializeResult(metadata={
        "new_files": result.files,
        "ingest_seconds": round(seconds, 3),
        "new_bytes": dg.MetadataValue.int(result.bytes),
        "lines_read": result.rows,
        "rows_inserted": result.inserted,
        "duplicates_dropped": result.duplicates,
        "rejects": result.rejects,
        "orphan_segments_sealed": result.recovered_segments,
        "partitions_listed": result.partitions_listed,
        "dagster/row_count": total,
        "rejects_total": rejects_total,
        "preview": preview,
    })


def newest_sealed_ctime(storage: StorageResource, since_ns: int = 0) -> int:
    """The newest ctime of a sealed segment, looking only in partitions changed since
    `since_ns`; `since_ns` if none is newer. The seal is a rename, which sets the segment's
    ctime and its directory's mtime together, so a segment sealed late (by a slow writer or
    by orphan recovery) still looks new, and a directory untouched since `since_ns` cannot
    hold one: a tick costs one stat per partition plus a listing of the changed ones."""
    changed = [hour_dir for hour_dir, mtime_ns in partition_mtimes(storage.paths.landing) if mtime_ns >= since_ns]
    newest = since_ns
    for path in iter_sealed_segments(storage.paths.landing, changed):
        try:
            newest = max(newest, os.stat(path).st_ctime_ns)
        except FileNotFoundError:
            continue
    return newest
