"""`landing_sensor` and `ingest_job`: an ingest run, and all that follows it, seconds after a
landing segment is sealed."""

import time

import dagster as dg

from layercode_pipeline.defs.dbt.assets import audited_check_keys
from layercode_pipeline.defs.dbt.project import DBT_GROUPS
from layercode_pipeline.defs.freshness import HEARTBEAT
from layercode_pipeline.defs.ingest.assets import HIGH_WATER_KEY, RAW_EVENTS, newest_sealed_ctime
from layercode_pipeline.defs.resources import StorageResource

# New raw data brings everything downstream up to date (enrichment, dbt, serving) in one run,
# in one process: the steps share one warehouse writer anyway, and a process per step costs
# a code-location import each. The REST backfill and recordings run on their own (hourly).
ingest_job = dg.define_asset_job(
    "ingest_job",
    # every dbt model, not only those downstream of the raw events: the marts also read the
    # agents, REST and recordings models, which must exist (empty) on a fresh warehouse
    # and the reviews written in the dashboard since the last run
    selection=(
        dg.AssetSelection.assets(RAW_EVENTS).downstream()
        | dg.AssetSelection.groups(*DBT_GROUPS)
        | dg.AssetSelection.groups("reviews")
    )
    - dg.AssetSelection.groups("agents", "backfill", "recordings")
    # the generic tests run inside the new-rows audit (one check), not as checks of their own
    - dg.AssetSelection.checks(*audited_check_keys()),
    executor_def=dg.in_process_executor,
    tags={"layercode/stage": "ingest"},
    description="Ingest newly sealed landing segments, then refresh enrichments, dbt models and the serving copy.",
)

WAITING = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING]
# after an ingest run failed (and the instance's run retries, if any, were used up), wait this
# long before asking again: the data is never forgotten, and a persistent fault is not hammered
RETRY_AFTER_FAILURE_S = 30.0
# a run started this long ago that has not begun its ingest is not counted on to do it (its
# process may have died without the run being marked failed yet)
POOL_WAIT_LIMIT_S = 600.0
# object stores stamp objects with their own clock: a little slack against skew
OBJECT_CLOCK_SLACK_NS = 5_000_000_000


@dg.sensor(
    job=ingest_job,
    minimum_interval_seconds=2,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests an ingest run when a segment was sealed after the last successful ingest's "
    "high-water mark (or after the listing of the run executing now) and no ingest run is waiting "
    "(queued, starting, or started but waiting for the warehouse: it ingests what is sealed meanwhile); "
    "also every 30 min without traffic (so the freshness policies see a live pipeline). A failed "
    "run's data is asked for again.",
)
def landing_sensor(context: dg.SensorEvaluationContext, storage: StorageResource) -> dg.SensorResult | dg.SkipReason:
    instance = context.instance
    # One run may wait while another executes: it starts (process, code location) meanwhile
    # and ingests the moment the warehouse is free, listing what was sealed up to then. While
    # one waits (queued, starting, or started but not yet ingesting: its steps wait for the
    # warehouse pool), a new segment is its data, not a reason for another run, so a call never
    # waits for two runs and no run with nothing new takes the warehouse between them.
    waiting = instance.get_run_records(dg.RunsFilter(job_name=ingest_job.name, statuses=WAITING), limit=1)
    if waiting:
        return dg.SkipReason(f"ingest run {waiting[0].dagster_run.run_id} is waiting to start")
    # The high-water mark comes from the last successful ingest, not from this sensor's cursor:
    # a run that failed moved nothing, so its segments are asked for again. A run executing now
    # lists everything sealed before its ingest step started.
    last = instance.get_latest_materialization_event(RAW_EVENTS)
    mat = last.asset_materialization if last else None
    high_water = int(str(mat.metadata[HIGH_WATER_KEY].value)) if mat and HIGH_WATER_KEY in mat.metadata else 0
    running = instance.get_run_records(
        dg.RunsFilter(job_name=ingest_job.name, statuses=[dg.DagsterRunStatus.STARTED]), limit=2
    )
    for record in running:
        listed_ns = ingest_listed_at(instance, record.dagster_run.run_id)
        started = record.start_time or time.time()
        if listed_ns is None and time.time() - started < POOL_WAIT_LIMIT_S:
            return dg.SkipReason(
                f"ingest run {record.dagster_run.run_id} waits for the warehouse; it ingests what is sealed meanwhile"
            )
        # (a run that has waited this long may be dead: what it would list counts from its start)
        high_water = max(high_water, listed_ns if listed_ns is not None else int(started * 1e9))
    slack = OBJECT_CLOCK_SLACK_NS if storage.object_landing is not None else 0
    since = max(0, high_water - slack)
    newest = newest_sealed_ctime(storage, since_ns=since)
    heartbeat_due = not running and (last is None or time.time() - last.timestamp > HEARTBEAT.total_seconds())
    if newest <= since and not heartbeat_due:
        return dg.SkipReason("nothing sealed since the last ingest")
    latest = instance.get_run_records(dg.RunsFilter(job_name=ingest_job.name), limit=1)
    if (
        latest
        and latest[0].dagster_run.status == dg.DagsterRunStatus.FAILURE
        and latest[0].end_time
        and time.time() - latest[0].end_time < RETRY_AFTER_FAILURE_S
    ):
        return dg.SkipReason(f"the last ingest run failed; asking again {RETRY_AFTER_FAILURE_S:.0f} s after it")
    reason = "sealed segments" if newest > since else "heartbeat"
    return dg.SensorResult(run_requests=[dg.RunRequest(tags={"layercode/reason": reason})])


def ingest_listed_at(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """When the run's ingest listed the landing (ns since the epoch: it observes the raw asset
    with its high-water mark as it starts), or None if it has not yet (it waits for the
    warehouse)."""
    observed = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_OBSERVATION).records
    for record in observed:
        obs = record.event_log_entry.asset_observation
        if obs is not None and obs.asset_key == RAW_EVENTS and HIGH_WATER_KEY in obs.metadata:
            return int(str(obs.metadata[HIGH_WATER_KEY].value))
    return None
