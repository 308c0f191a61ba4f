"""`backfill_job`: the agents list, REST records for gaps and ready recordings, launched by hand
(the assets themselves run hourly through their automation condition, see defs/freshness.py)."""

import dagster as dg

from layercode_pipeline.defs.backfill.assets import SESSION_DETAILS
from layercode_pipeline.defs.dbt.assets import audited_check_keys

backfill_job = dg.define_asset_job(
    "backfill_job",
    selection=dg.AssetSelection.assets(
        SESSION_DETAILS, dg.AssetKey("layercode_recordings"), dg.AssetKey("layercode_agents")
    ).downstream()
    # the generic tests run inside the new-rows audit (one check), not as checks of their own
    - dg.AssetSelection.checks(*audited_check_keys()),
    executor_def=dg.in_process_executor,
    tags={"layercode/stage": "backfill"},
    description="List the agents, fill gaps from the REST API, fetch ready recordings, then refresh what depends "
    "on them.",
)
