"""Recordings: every completed WAV downloaded, verified, measured and kept in the recordings
store (a directory, or S3), with warning checks on what the audio says."""

import asyncio

import dagster as dg

from layercode_pipeline.defs.backfill.assets import SESSION_DETAILS
from layercode_pipeline.defs.freshness import API_CRON
from layercode_pipeline.defs.ingest.assets import RAW_EVENTS
from layercode_pipeline.defs.resources import LayercodeAPIResource, StorageResource
from layercode_pipeline.lib.recordings import (
    AUDIO_CHECKS,
    audio_check_failures,
    download_recordings,
    measure_kept,
    plan_recordings,
    read_candidates,
    recording_candidates,
    store_measurements,
    store_recordings,
)
from layercode_pipeline.lib.warehouse import scalar

RECORDINGS = dg.AssetKey("layercode_recordings")


@dg.asset(
    key=RECORDINGS,
    deps=[RAW_EVENTS, SESSION_DETAILS],
    group_name="recordings",
    # No warehouse pool: the step holds the writers' lock only to plan and to record, never
    # while downloading, so a slow recording host does not hold up the ingest.
    automation_condition=API_CRON,
    kinds={"duckdb", "api", "s3"},
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
            description="Every recording raw.layercode_recordings lists as downloaded is in the recordings store, "
            "with the size it had when kept (and, on disk, a valid WAV header). A broken one is fetched again in "
            "the same run; a failure names each file still broken (no key, or the fetch failed) and what is wrong.",
        ),
        *(dg.AssetCheckSpec(name, asset=RECORDINGS, description=text) for name, (text, _sql) in AUDIO_CHECKS.items()),
    ],
    description="raw.layercode_recordings and the WAV files in the recordings store (LAYERCODE_RECORDINGS_URL: "
    "a directory or s3://bucket/prefix), laid out as agent=&lt;id&gt;/dt=&lt;date&gt;/&lt;session&gt;.wav. A "
    "file is kept only when its RIFF header agrees with its size and it is under LAYERCODE_RECORDING_MAX_BYTES; "
    "its audio is measured (silence, clipping, loudness, real length); not-ready recordings are retried on a "
    "later run.",
)
def layercode_recordings(
    context: dg.AssetExecutionContext, storage: StorageResource, layercode_api: LayercodeAPIResource
) -> dg.MaterializeResult:
    store = storage.recording_store()
    scratch = storage.paths.data_dir / ".recordings-scratch" / f"{context.run_id}.parquet"
    with storage.connect() as con:  # plan under the writers' lock ...
        recording_candidates(con, scratch)
    plan = plan_recordings(
        read_candidates(scratch), store
    )  # ... verify the kept files, download and measure without it ...
    downloads, rows, held = plan.downloads, plan.rows, plan.held
    waiting_for_key = len(downloads) if downloads and not layercode_api.configured else 0
    if waiting_for_key:  # optional configuration missing: degrade, never block the marts
        context.log.warning(
            f"{waiting_for_key} recordings are ready but LAYERCODE_API_KEY is not set; "
            "they are fetched on the first run with a key"
        )
        downloads = []
    if downloads:
        rows += asyncio.run(_download(layercode_api, store, downloads))
    measured = measure_kept(store, plan.unmeasured)
    with storage.connect() as con:  # ... and record under it again
        store_recordings(con, rows)
        store_measurements(con, measured)
        summary = dict(con.execute("select status, count(*) from raw.layercode_recordings group by 1").fetchall())
        total_bytes = scalar(
            con, "select coalesce(sum(bytes), 0) from raw.layercode_recordings where status = 'downloaded'"
        )
        failures = audio_check_failures(
            con, [r.session_id for r in rows if r.audio is not None] + [m[1] for m in measured]
        )
    # kept files found broken and not fetched again this run (no key, or the fetch failed)
    fetched = {r.session_id for r in rows if r.status == "downloaded"}
    broken = [b for b in plan.broken if b["session_id"] not in fetched]
    counts = {s: sum(1 for r in rows if r.status == s) for s in ("downloaded", "not_ready", "failed", "error")}
    for r in [r for r in rows if r.status == "error"][:10]:
        context.log.warning(f"recording {r.session_id}: {r.error}")
    checks = [
        dg.AssetCheckResult(
            check_name="api_key_configured",
            passed=not waiting_for_key,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"recordings_waiting_for_a_key": waiting_for_key},
        ),
        dg.AssetCheckResult(
            check_name="kept_wavs_valid",
            passed=not broken,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "kept": held + len(plan.broken),
                "broken": len(broken),
                "examples": dg.MetadataValue.json(broken[:10]),
            },
        ),
        *(
            dg.AssetCheckResult(
                check_name=name,
                passed=not found,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"recordings": len(found), "examples": dg.MetadataValue.json(found[:10])},
            )
            for name, found in failures.items()
        ),
    ]
    return dg.MaterializeResult(
        check_results=checks,
        metadata={
            **{f"this_run_{k}": v for k, v in counts.items()},
            "already_held": held,
            "measured_kept_recordings": len(measured),
            "waiting_for_api_key": waiting_for_key,
            "by_status": dg.MetadataValue.json(summary),
            "bytes_kept": int(total_bytes),
            "dagster/row_count": sum(summary.values()),
        },
    )


async def _download(api: LayercodeAPIResource, store, downloads):
    async with api.client() as client:
        return await download_recordings(
            client, store, downloads, max_bytes=api.recording_max_bytes, deadline_s=api.recording_deadline_s
        )
