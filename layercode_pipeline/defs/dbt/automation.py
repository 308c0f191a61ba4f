"""`dbt_full_tests_job` and its daily schedule: every dbt test over whole tables.

A pipeline run tests only the rows it wrote (`test_scope` "new", see defs/dbt/project.py), so
its cost follows the new calls. A defect in an old row (a bad backfill, a hand edit, a bug
fixed since) is found here: the job runs the tests alone (no model is built), and each result
is the same asset check in the UI, with its time.
"""

import dagster as dg

from layercode_pipeline.defs.dbt.assets import layercode_dbt_models

dbt_full_tests_job = dg.define_asset_job(
    "dbt_full_tests_job",
    # (not the new-rows audit: outside a pipeline run it has no new rows to check)
    selection=dg.AssetSelection.checks_for_assets(layercode_dbt_models)
    - dg.AssetSelection.checks(dg.AssetCheckKey(dg.AssetKey(["marts", "fct_sessions"]), "new_rows_audit")),
    executor_def=dg.in_process_executor,
    tags={"layercode/stage": "full_tests"},
    description="Every dbt test over whole tables (pipeline runs test only the rows they wrote).",
)

dbt_full_tests_schedule = dg.ScheduleDefinition(
    job=dbt_full_tests_job,
    cron_schedule="30 3 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily at 03:30 UTC: every dbt test over whole tables.",
)
