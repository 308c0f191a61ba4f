"""`result_webhooks_sensor`: the outbox's retries and anything a run's own first attempts left.

It launches no run (a run's start-up would cost seconds per message): each tick starts one
worker per endpoint with due messages, on the code location's threads, and returns after at
most `TICK_WAIT_S`; a hung endpoint's worker keeps its endpoint until its deadline, and the
next ticks skip that endpoint only.
"""

import dagster as dg

from layercode_pipeline.defs.resources import ResultWebhooksResource
from layercode_pipeline.defs.results.assets import dispatcher_for

TICK_WAIT_S = 1.0


@dg.sensor(
    minimum_interval_seconds=2,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Delivers due result webhook messages from the outbox (first attempts a run could not make, "
    "retries on the schedule), one worker per endpoint, without launching a run.",
)
def result_webhooks_sensor(result_webhooks: ResultWebhooksResource) -> dg.SkipReason:
    endpoints = result_webhooks.endpoints()
    if not endpoints:
        return dg.SkipReason("no result webhook endpoints configured (LAYERCODE_RESULT_WEBHOOKS)")
    stats = dispatcher_for(result_webhooks, endpoints).run_round(wait_s=TICK_WAIT_S)
    busy = f"; {stats.busy_endpoints} endpoint(s) still busy from an earlier tick" if stats.busy_endpoints else ""
    return dg.SkipReason(stats.summary() + busy)
