"""Reviews: the dashboard workbench's review files ingested into raw.reviews."""

import dagster as dg

from layercode_pipeline.defs.freshness import DOWNSTREAM
from layercode_pipeline.defs.resources import WAREHOUSE_POOL, StorageResource
from layercode_pipeline.lib.reviews import ReviewLog, ingest_reviews
from layercode_pipeline.lib.warehouse import scalar

RAW_REVIEWS = dg.AssetKey("raw_reviews")


@dg.asset(
    key=RAW_REVIEWS,
    group_name="reviews",
    pool=WAREHOUSE_POOL,
    # every ingest run takes the reviews written since (ingest_job selects this asset)
    automation_condition=DOWNSTREAM,
    kinds={"duckdb"},
    check_specs=[
        dg.AssetCheckSpec(
            "no_rejected_review_lines",
            asset=RAW_REVIEWS,
            description="Every line of the review files is a valid review. A rejected line is kept in "
            "raw.review_rejects with why; the others are ingested.",
        )
    ],
    description="raw.reviews: one row per review saved in the dashboard's workbench (reviews/reviews-&lt;date&gt;.jsonl "
    "under the data directory, append-only and fsynced), read from where the last run stopped.",
)
def raw_reviews(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
    log = ReviewLog(storage.paths.reviews)
    with storage.connect() as con:
        counts = ingest_reviews(con, log)
        total = scalar(con, "select count(*) from raw.reviews")
    if counts["rejected"]:
        context.log.warning(f"{counts['rejected']} review lines rejected: see raw.review_rejects")
    return dg.MaterializeResult(
        metadata={**{f"this_run_{k}": v for k, v in counts.items()}, "dagster/row_count": int(total)},
        check_results=[
            dg.AssetCheckResult(
                check_name="no_rejected_review_lines",
                passed=not counts["rejected"],
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"rejected_this_run": counts["rejected"]},
            )
        ],
    )
