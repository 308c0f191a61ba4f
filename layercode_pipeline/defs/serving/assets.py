"""`analytics_serving`: the marts, published for BI tools as serving/analytics.duckdb."""

import contextlib

import dagster as dg

from layercode_pipeline.defs.dbt.assets import SERVING_KEY, dbt_view_keys, layercode_dbt_models
from layercode_pipeline.defs.freshness import DOWNSTREAM, FRESHNESS
from layercode_pipeline.defs.resources import StorageResource
from layercode_pipeline.lib.serving_copy import publish_serving_copy

# every dbt model under models/marts that is a table, as the dbt project declares them (the
# copy takes every table of the schema, so a new mart is published without editing a list
# here; a view is not copied, and a pipeline run does not rebuild one)
MARTS = sorted(key for key in layercode_dbt_models.keys if key.path[0] == "marts" and key not in dbt_view_keys())


# Not in the warehouse pool: the writers' lock orders it with the other writers, and a publish
# takes it ahead of the writers already waiting (`first`). In the pool, or without going first,
# it would wait behind the next run's steps, which take the lock one after another: the calls
# just built would be published only after the next run's whole build.
@dg.asset(
    key=SERVING_KEY,
    deps=MARTS,
    group_name="serving",
    automation_condition=DOWNSTREAM,
    freshness_policy=FRESHNESS,
    kinds={"duckdb"},
    # paths in backticks: the UI renders descriptions as Markdown, which eats a bare <placeholder>
    description="Copies schema marts into `serving/analytics.duckdb` (in a storage format DuckDB 1.1 and later "
    "open) and Parquet files (`serving/parquet/<mart>/<date>=<day>/part.parquet` for the session, turn and "
    "conversation marts, `serving/parquet/<mart>.parquet` for the others). analytics.duckdb links to one of a "
    "pair of files: the other is updated in place, then the link is swapped, then the Parquet files follow (each "
    "written new and renamed), so BI readers never block the pipeline and never see a half-written file. After the first "
    "publish, only the rows and days the marts rebuilt are copied.",
)
def analytics_serving(storage: StorageResource) -> dg.MaterializeResult:
    warehouse = storage.warehouse
    # a consistent set of marts (no build in between), taken ahead of the writers waiting. Let
    # go as soon as the marts are read: the Parquet files and the swap that follow read only
    # the serving copy, and the next run's ingest need not wait for them.
    with contextlib.ExitStack() as writers_lock:
        writers_lock.enter_context(warehouse.lock(first=True))
        published = publish_serving_copy(warehouse, storage.paths.serving, warehouse_read=writers_lock.close)
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(storage.paths.serving / "analytics.duckdb")),
            "parquet_dir": dg.MetadataValue.path(str(storage.paths.serving / "parquet")),
            "tables": dg.MetadataValue.json(published.counts),
            # what this publish wrote: a whole copy, or the rows and days that changed
            "whole_copy": published.whole,
            # the file of the pair readers now open, and whether it was updated in place
            "file": published.file,
            "updated_in_place": published.in_place,
            "rows_copied": dg.MetadataValue.json(published.rows_copied),
            "parquet_partitions_written": dg.MetadataValue.json(
                {table: len(parts) for table, parts in published.parquet_written.items()}
            ),
        }
    )
