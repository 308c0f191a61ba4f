"""`result_webhooks_sensor`: call.analyzed straight from the landing (the express path), the
outbox's retries, and anything a run's own first attempts left.

It launches no run (a run's start-up would cost seconds per message). Each tick:
* the express path (`lib/result_webhooks/express.py`): every session.end sealed since the last
  tick is analysed and recorded as `call.analyzed`, without the warehouse (which the ingest
  run in flight may hold for its dbt build); the enrichment run then takes the answer over;
* one delivery worker per endpoint with due messages, on the code location's threads,
  returning after at most `TICK_WAIT_S`; a hung endpoint's worker keeps its endpoint until its
  deadline, and the next ticks skip that endpoint only.
"""

import dagster as dg
import duckdb

from layercode_pipeline.defs.enrichment.assets import enrichment_setup
from layercode_pipeline.defs.resources import OpenAIResource, ResultWebhooksResource, StorageResource
from layercode_pipeline.defs.results.assets import dispatcher_for
from layercode_pipeline.lib.enrichment.analysis import schema_version
from layercode_pipeline.lib.erasure_ledger import ErasureLedger
from layercode_pipeline.lib.result_webhooks.express import express_round
from layercode_pipeline.lib.serving_copy import SERVING_FILE

TICK_WAIT_S = 1.0


def agent_names(storage: StorageResource) -> dict[str, str]:
    """Agent names as the serving copy has them (a reader never waits for the warehouse)."""
    path = storage.paths.serving / SERVING_FILE
    if not path.exists():
        return {}
    try:
        con = duckdb.connect(str(path), read_only=True)
        try:
            return dict(
                con.execute("select agent_id, agent_name from marts.dim_agents where agent_name is not null").fetchall()
            )
        finally:
            con.close()
    except duckdb.Error:
        return {}  # being replaced, or from before dim_agents: the warehouse path names them


@dg.sensor(
    minimum_interval_seconds=2,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Records call.analyzed for each session.end sealed since its last tick, analysed straight from the "
    "landing (the express path: no wait for the warehouse), then delivers due result webhook messages from "
    "the outbox (first attempts, retries on the schedule), one worker per endpoint, without launching a run.",
)
def result_webhooks_sensor(
    result_webhooks: ResultWebhooksResource, storage: StorageResource, openai: OpenAIResource
) -> dg.SkipReason:
    endpoints = result_webhooks.endpoints()
    if not endpoints:
        return dg.SkipReason("no result webhook endpoints configured (LAYERCODE_RESULT_WEBHOOKS)")
    express = ""
    if result_webhooks.express and storage.object_landing is None:
        settings, schema, make_provider = enrichment_setup(openai)
        express_stats = express_round(
            storage.paths.landing,
            result_webhooks.outbox(),
            endpoints,
            make_provider,
            settings,
            schema_version(schema),
            storage.answer_cache(),
            agent_names=lambda: agent_names(storage),
            # erased callers' calls, landed before the erasure or after it, are never sent
            erased=ErasureLedger.under(storage.paths.data_dir).erased(storage.privacy_key_value()),
        )
        express = express_stats.summary() + "; "
    stats = dispatcher_for(result_webhooks, endpoints).run_round(wait_s=TICK_WAIT_S)
    busy = f"; {stats.busy_endpoints} endpoint(s) still busy from an earlier tick" if stats.busy_endpoints else ""
    return dg.SkipReason(express + stats.summary() + busy)
