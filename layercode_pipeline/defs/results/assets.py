"""`result_webhooks`: each analysed call (and each kept recording) as a signed message to the
customer's product, recorded in the outbox, then sent at once (`call.analyzed` leaves before
dbt and the serving publish); `raw.result_webhook_deliveries` mirrors the outbox for the mart.
"""

import threading
from datetime import UTC, datetime

import dagster as dg

from layercode_pipeline.config import ResultEndpoint
from layercode_pipeline.defs.freshness import DOWNSTREAM
from layercode_pipeline.defs.resources import WAREHOUSE_POOL, ResultWebhooksResource, StorageResource
from layercode_pipeline.lib.result_webhooks.delivery import Dispatcher, redact_url
from layercode_pipeline.lib.result_webhooks.messages import (
    CALL_ANALYZED,
    CALL_RECORDING_READY,
    analyzed_messages,
    facts_ready,
    recording_messages,
)
from layercode_pipeline.lib.result_webhooks.mirror import mirror_deliveries

RESULT_WEBHOOKS = dg.AssetKey("result_webhooks")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# the outbox marks: the newest analysis / kept recording already turned into messages
MARKS = {CALL_ANALYZED: "analyzed_since", CALL_RECORDING_READY: "recordings_since"}

_dispatchers: dict[tuple, Dispatcher] = {}
_dispatchers_lock = threading.Lock()


def dispatcher_for(resource: ResultWebhooksResource, endpoints: list[ResultEndpoint]) -> Dispatcher:
    """One dispatcher per process and configuration: its record of busy endpoints (a hung
    receiver's worker) outlives a sensor tick, so the next tick does not start a second one."""
    key = (
        resource.outbox_path,
        tuple((e.url, e.secrets, tuple(sorted(e.events)), tuple(sorted(e.agents or ()))) for e in endpoints),
        resource.timeout_s,
        tuple(resource.retry_schedule_s),
    )
    with _dispatchers_lock:
        if key not in _dispatchers:
            _dispatchers[key] = Dispatcher(
                resource.outbox(), endpoints, timeout_s=resource.timeout_s, schedule_s=resource.retry_schedule_s
            )
        return _dispatchers[key]


@dg.asset(
    key=RESULT_WEBHOOKS,
    deps=["session_enrichments", "layercode_recordings"],
    group_name="results",
    pool=WAREHOUSE_POOL,
    automation_condition=DOWNSTREAM,
    kinds={"sqlite", "webhook"},
    check_specs=[
        dg.AssetCheckSpec(
            "no_dead_lettered_deliveries",
            asset=RESULT_WEBHOOKS,
            description="No result webhook message is dead-lettered (its last retry failed, or its endpoint answered "
            "410 Gone). Re-send with `layercode-pipeline deliveries replay --status dead`.",
        )
    ],
    description="Result webhooks (Standard Webhooks, signed): call.analyzed when a session's analysis exists (again "
    "after a re-analysis), call.recording_ready when a WAV is kept. Each message is committed to the "
    "outbox before its first attempt, then sent at once; result_webhooks_sensor retries on the "
    "schedule. Metadata: pending, delivered and dead-lettered deliveries per endpoint.",
)
def result_webhooks(
    context: dg.AssetExecutionContext, storage: StorageResource, result_webhooks: ResultWebhooksResource
) -> dg.MaterializeResult:
    endpoints = result_webhooks.endpoints()
    outbox = result_webhooks.outbox()
    marks = {t: datetime.fromisoformat(outbox.mark(m)) if outbox.mark(m) else EPOCH for t, m in MARKS.items()}
    built: dict[str, list] = {}
    new_marks: dict[str, datetime | None] = {}
    waiting = False
    with storage.connect() as con:
        if endpoints:
            if facts_ready(con):
                built[CALL_ANALYZED], new_marks[CALL_ANALYZED] = analyzed_messages(con, marks[CALL_ANALYZED])
            else:  # a fresh warehouse: the staging views the facts come from appear with dbt's first build
                waiting = True
                context.log.info("call.analyzed messages wait for dbt's first build (the staging views)")
            built[CALL_RECORDING_READY], new_marks[CALL_RECORDING_READY] = recording_messages(
                con, marks[CALL_RECORDING_READY]
            )
        else:  # nobody to send to: an endpoint added later receives what is analysed from then on
            now = datetime.now(UTC)
            new_marks = {CALL_ANALYZED: now, CALL_RECORDING_READY: now}
    added = 0
    for messages in built.values():
        added += outbox.enqueue(messages, endpoints)
    for event_type, mark in new_marks.items():
        if mark is not None:
            outbox.set_mark(MARKS[event_type], mark.isoformat())
    if endpoints and added:
        # first attempts now, on the dispatcher's own threads: dbt and the serving publish go on
        # meanwhile; what this process cannot finish, result_webhooks_sensor retries
        dispatcher_for(result_webhooks, endpoints).run_round(wait_s=0)
    counts = outbox.counts()
    with storage.connect() as con:
        mirrored = mirror_deliveries(con, outbox)
    dead = sum(c["dead"] for c in counts.values())
    per_endpoint = {redact_url(url): c for url, c in counts.items()}
    return dg.MaterializeResult(
        metadata={
            "endpoints": len(endpoints),
            "messages_enqueued": added,
            "call_analyzed_built": len(built.get(CALL_ANALYZED, [])),
            "call_recording_ready_built": len(built.get(CALL_RECORDING_READY, [])),
            "waiting_for_first_dbt_build": waiting,
            "deliveries": dg.MetadataValue.json(per_endpoint),
            "dagster/row_count": mirrored,
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="no_dead_lettered_deliveries",
                passed=dead == 0,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={
                    "dead": dead,
                    "per_endpoint": dg.MetadataValue.json({u: c["dead"] for u, c in per_endpoint.items()}),
                    "disabled_endpoints": dg.MetadataValue.json(
                        {redact_url(u): r for u, r in outbox.disabled_endpoints().items()}
                    ),
                },
            )
        ],
    )
