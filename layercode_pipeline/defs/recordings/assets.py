"""Recordings: every completed WAV downloaded, verified and kept under `recordings/`."""

import asyncio

import dagster as dg

from layercode_pipeline.defs.backfill.assets import SESSION_DETAILS
from layercode_pipeline.defs.freshness import API_CRON
from layercode_pipeline.defs.ingest.assets import RAW_EVENTS
from layercode_pipeline.defs.resources import WAREHOUSE_POOL, LayercodeAPIResource, StorageResource
from layercode_pipeline.lib.recordings import download_recordings, plan_recordings, store_recordings
from layercode_pipeline.lib.warehouse import scalar

RECORDINGS = dg.AssetKey("layercode_recordings")


@dg.asset(
    key=RECORDINGS,
    deps=[RAW_EVENTS, SESSION_DETAILS],
    group_name="recordings",
    pool=WAREHOUSE_POOL,
    automation_condition=API_CRON,
    kinds={"duckdb", "api"},
    check_specs=[
        dg.AssetCheckSpec(
            "api_key_configured",
            asset=RECORDINGS,
            description="Recordings that are ready could be fetched (LAYERCODE_API_KEY is set). Without a key they "
            "wait, and the marts still refresh from the webhooks.",
        ),
        dg.AssetCheckSpec(
            "kept_wavs_valid",
            asset=RECORDINGS,
            description="Every recording raw.layercode_recordings lists as downloaded is on disk, with the size it "
            "had when kept and a valid WAV header. A broken one is fetched again in the same run; a "
            "failure names each file still broken (no key, or the fetch failed) and what is wrong.",
        ),
    ],
    description="raw.layercode_recordings and the WAV files under recordings/agent=&lt;id&gt;/dt=&lt;date&gt;/. A "
    "file is kept only when its RIFF header agrees with its size; not-ready recordings are retried on a "
    "later run.",
)
def layercode_recordings(
    context: dg.AssetExecutionContext, storage: StorageResource, layercode_api: LayercodeAPIResource
) -> dg.MaterializeResult:
    with storage.connect() as con:
        plan = plan_recordings(con, storage.paths.recordings)
        downloads, rows, held = plan.downloads, plan.rows, plan.held
        waiting_for_key = len(downloads) if downloads and not layercode_api.configured else 0
        if waiting_for_key:  # optional configuration missing: degrade, never block the marts
            context.log.warning(
                f"{waiting_for_key} recordings are ready but LAYERCODE_API_KEY is not set; "
                "they are fetched on the first run with a key"
            )
            downloads = []
        if downloads:
            rows += asyncio.run(_download(layercode_api, downloads))
        store_recordings(con, rows)
        summary = dict(con.execute("select status, count(*) from raw.layercode_recordings group by 1").fetchall())
        total_bytes = scalar(
            con, "select coalesce(sum(bytes), 0) from raw.layercode_recordings where status = 'downloaded'"
        )
    # kept files found broken and not fetched again this run (no key, or the fetch failed)
    fetched = {r.session_id for r in rows if r.status == "downloaded"}
    broken = [b for b in plan.broken if b["session_id"] not in fetched]
    counts = {s: sum(1 for r in rows if r.status == s) for s in ("downloaded", "not_ready", "failed", "error")}
    for r in [r for r in rows if r.status == "error"][:10]:
        context.log.warning(f"recording {r.session_id}: {r.error}")
    check = dg.AssetCheckResult(
        check_name="api_key_configured",
        passed=not waiting_for_key,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"recordings_waiting_for_a_key": waiting_for_key},
    )
    wavs = dg.AssetCheckResult(
        check_name="kept_wavs_valid",
        passed=not broken,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "kept": held + len(plan.broken),
            "broken": len(broken),
            "examples": dg.MetadataValue.json(broken[:10]),
        },
    )
    return dg.MaterializeResult(
        check_results=[check, wavs],
        metadata={
            **{f"this_run_{k}": v for k, v in counts.items()},
            "already_held": held,
            "waiting_for_api_key": waiting_for_key,
            "by_status": dg.MetadataValue.json(summary),
            "bytes_on_disk": int(total_bytes),
            "dagster/row_count": sum(summary.values()),
        },
    )


async def _download(api: LayercodeAPIResource, downloads):
    async with api.client() as client:
        return await download_recordings(client, downloads)
