"""`analytics_serving`: the marts, published for BI tools as serving/analytics.duckdb."""

import dagster as dg

from layercode_pipeline.defs.dbt.assets import layercode_dbt_models
from layercode_pipeline.defs.freshness import DOWNSTREAM, FRESHNESS
from layercode_pipeline.defs.resources import WAREHOUSE_POOL, StorageResource
from layercode_pipeline.lib.serving_copy import publish_serving_copy

# every dbt model under models/marts, as the dbt project declares them (the copy takes every
# table of the schema, so a new mart is published without editing a list here)
MARTS = sorted(key for key in layercode_dbt_models.keys if key.path[0] == "marts")


@dg.asset(
    deps=MARTS,
    group_name="serving",
    pool=WAREHOUSE_POOL,
    automation_condition=DOWNSTREAM,
    freshness_policy=FRESHNESS,
    kinds={"duckdb"},
    description="Copies schema marts into serving/analytics.duckdb (in a storage format DuckDB 1.1 and later "
    "open) and serving/parquet/<mart>.parquet: written as new files, then renamed over the old ones, "
    "so BI readers never block the pipeline and never see a half-written file.",
)
def analytics_serving(storage: StorageResource) -> dg.MaterializeResult:
    warehouse = storage.warehouse
    with warehouse.lock():  # a consistent set of marts: no dbt build in between
        counts = publish_serving_copy(warehouse, storage.paths.serving)
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(storage.paths.serving / "analytics.duckdb")),
            "parquet_dir": dg.MetadataValue.path(str(storage.paths.serving / "parquet")),
            "tables": dg.MetadataValue.json(counts),
        }
    )
