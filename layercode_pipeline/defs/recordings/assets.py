"""Recordings: every completed WAV downloaded, verified and kept under `recordings/`."""

import asyncio

import dagster as dg

from layercode_pipeline.defs.backfill.assets import SESSION_DETAILS
from layercode_pipeline.defs.ingest.assets import RAW_EVENTS
from layercode_pipeline.defs.resources import WAREHOUSE_POOL, LayercodeAPIResource, StorageResource
from layercode_pipeline.lib.recordings import download_recordings, plan_recordings, store_recordings

RECORDINGS = dg.AssetKey("layercode_recordings")


@dg.asset(
    key=RECORDINGS,
    deps=[RAW_EVENTS, SESSION_DETAILS],
    group_name="recordings",
    pool=WAREHOUSE_POOL,
    kinds={"duckdb", "api"},
    description="raw.layercode_recordings and the WAV files under recordings/agent=<id>/dt=<date>/. A file is kept "
                "only when its RIFF header agrees with its size; not-ready recordings are retried on a later run.",
)
def layercode_recordings(context: dg.AssetExecutionContext, storage: StorageResource,
                         layercode_api: LayercodeAPIResource) -> dg.MaterializeResult:
    with storage.connect() as con:
        downloads, rows, held = plan_recordings(con, storage.paths.recordings)
        if downloads and not layercode_api.configured:
            raise dg.Failure(f"{len(downloads)} recordings are ready but LAYERCODE_API_KEY is not set")
        if downloads:
            rows += asyncio.run(_download(layercode_api, downloads))
        store_recordings(con, rows)
        summary = dict(con.execute("select status, count(*) from raw.layercode_recordings group by 1").fetchall())
        total_bytes = con.execute("select coalesce(sum(bytes), 0) from raw.layercode_recordings "
                                  "where status = 'downloaded'").fetchone()[0]
    counts = {s: sum(1 for r in rows if r.status == s) for s in ("downloaded", "not_ready", "failed", "error")}
    for r in [r for r in rows if r.status == "error"][:10]:
        context.log.warning(f"recording {r.session_id}: {r.error}")
    return dg.MaterializeResult(metadata={
        **{f"this_run_{k}": v for k, v in counts.items()}, "already_held": held,
        "by_status": dg.MetadataValue.json(summary), "bytes_on_disk": int(total_bytes),
        "dagster/row_count": sum(summary.values()),
    })


async def _download(api: LayercodeAPIResource, downloads):
    async with api.client() as client:
        return await download_recordings(client, downloads)
