"""How fresh each asset is kept, in one place: the automation conditions the assets declare,
the freshness policies the UI judges them by, and the sensor that evaluates the conditions.

* New landed data: `landing_sensor` (defs/ingest/automation.py) asks for one in-process run of
  the ingest and everything downstream of it, seconds after a segment is sealed.
* Everything downstream of the raw tables (enrichment, dbt models, the serving copy) follows
  its parents with `AutomationCondition.eager()`: after the hourly REST backfill, recordings
  or agents list, they refresh without a human.
* The REST-calling assets run hourly (`API_CRON`), in their own run, never blocking the rest.
* Raw events and marts carry a `FreshnessPolicy`: the landing sensor ingests at least every
  `HEARTBEAT` even without traffic, so a stalled pipeline (a stopped daemon, a failing run)
  shows as late, then failed, in the UI.
"""

from datetime import timedelta

import dagster as dg

HEARTBEAT = timedelta(minutes=30)
FRESHNESS = dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=2), warn_window=timedelta(hours=1))

DOWNSTREAM = dg.AutomationCondition.eager()
API_CRON_SCHEDULE = "17 * * * *"
API_CRON = (
    dg.AutomationCondition.cron_tick_passed(API_CRON_SCHEDULE) & ~dg.AutomationCondition.in_progress()
).with_label("hourly at :17")

layercode_automation = dg.AutomationConditionSensorDefinition(
    "layercode_automation",
    target=dg.AssetSelection.all(),
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    run_tags={"layercode/stage": "automation"},
    description="Evaluates every asset's automation condition: downstream assets follow their parents (eager), "
    "the REST backfill, recordings and agents list run hourly.",
)
