"""`hourly_backfill`: the agents list, REST records for gaps and ready recordings, every hour."""

import dagster as dg

from layercode_pipeline.defs.backfill.assets import SESSION_DETAILS

backfill_job = dg.define_asset_job(
    "backfill_job", selection=dg.AssetSelection.assets(
        SESSION_DETAILS, dg.AssetKey("layercode_recordings"), dg.AssetKey("layercode_agents")).downstream(),
    description="List the agents, fill gaps from the REST API, fetch ready recordings, then refresh what depends "
                "on them.")

backfill_schedule = dg.ScheduleDefinition(
    name="hourly_backfill", job=backfill_job, cron_schedule="17 * * * *",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Hourly: the agents list, REST records for sessions whose session.end never came, and recordings "
                "that became ready.")
