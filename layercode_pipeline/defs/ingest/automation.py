"""`landing_sensor` and `ingest_job`: an ingest run, and all that follows it, when sealed segments are waiting."""


import dagster as dg

from layercode_pipeline.defs.ingest.assets import RAW_EVENTS, newest_sealed_ctime
from layercode_pipeline.defs.resources import StorageResource

# New raw data brings everything downstream up to date (enrichment, dbt, serving) with no
# human in the loop; the REST backfill and recordings run on their own hourly schedule.
ingest_job = dg.define_asset_job(
    "ingest_job",
    # every dbt model, not only those downstream of the raw events: the marts also read the
    # agents, REST and recordings models, which must exist (empty) on a fresh warehouse
    selection=(dg.AssetSelection.assets(RAW_EVENTS).downstream()
               | dg.AssetSelection.groups("dbt_staging", "dbt_intermediate", "dbt_marts"))
    - dg.AssetSelection.groups("agents", "backfill", "recordings"),
    description="Ingest newly sealed landing segments, then refresh enrichments, dbt models and the serving copy.",
)


@dg.sensor(job=ingest_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.STOPPED,
           description="Requests an ingest run when a landing segment was sealed since the last request. "
                       "The cursor is the newest seal time seen, not a run key per file.")
def landing_sensor(context: dg.SensorEvaluationContext, storage: StorageResource) -> dg.SensorResult | dg.SkipReason:
    last = int(context.cursor) if context.cursor else 0
    newest = newest_sealed_ctime(storage, since_ns=last)
    if newest <= last:
        return dg.SkipReason("no segment sealed since the last request")
    return dg.SensorResult(run_requests=[dg.RunRequest(run_key=f"landing-{newest}")], cursor=str(newest))
