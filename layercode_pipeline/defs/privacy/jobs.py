"""`forget_job`: `layercode-pipeline forget` as a Dagster job, launched from the UI or the API;
and `retention_job`, run daily, expiring old recordings, text, landing files and reviews.

Its run config names a file of identifiers on the code location's host (the format of
`forget --from-file`), never the identifiers themselves: Dagster keeps every run's config,
and an erased caller's phone number must not stay there. The run's logs and metadata carry
counts only."""

from pathlib import Path

import dagster as dg

from layercode_pipeline.defs.resources import (
    WAREHOUSE_POOL,
    ResultWebhooksResource,
    RetentionResource,
    StorageResource,
)
from layercode_pipeline.lib.privacy import UnmatchedIdentifiers, forget, read_selectors
from layercode_pipeline.lib.retention import RetentionPolicy, apply_retention, check_policy


class ForgetConfig(dg.Config):
    from_file: str  # one identifier per line: session:<id>, conversation:<id> or phone:<E.164>
    # erase what matched even when some identifiers match no session (their tombstones still
    # keep them out); false: such a file fails the run and nothing is erased
    allow_unmatched: bool = False


@dg.op(pool=WAREHOUSE_POOL, description="Forget the callers the file names, in every store (lib/privacy.py).")
def forget_callers(
    context: dg.OpExecutionContext,
    config: ForgetConfig,
    storage: StorageResource,
    result_webhooks: ResultWebhooksResource,
) -> None:
    selectors = read_selectors(Path(config.from_file))
    try:
        reports = forget(
            warehouse=storage.warehouse,
            paths=storage.paths,
            key=storage.privacy_key_value(),
            selectors=selectors,
            recordings=storage.recording_store(),
            outbox_path=Path(result_webhooks.outbox_path),
            endpoints=result_webhooks.endpoints(),
            object_landing=storage.object_landing,
            # this instance's own copies (SQLite storage under its home; Postgres is not scrubbed)
            dagster_home=Path(context.instance.root_directory) if context.instance.root_directory else None,
            requested_by="dagster",
            allow_unmatched=config.allow_unmatched,
        )
    except UnmatchedIdentifiers as exc:
        # positions in the file, never the identifiers: Dagster keeps every run's logs
        lines = [i + 1 for i, s in enumerate(selectors) if s in exc.unmatched]
        raise dg.Failure(
            f"{len(exc.unmatched)} of {len(selectors)} identifiers in the file matched no session "
            f"(identifiers number {lines[:20]}): nothing was erased. Fix them, or set allow_unmatched.",
        ) from None
    for report in reports:
        context.log.info(
            f"erasure {report.erasure_id}{' (finished, stopped half-way earlier)' if report.resumed else ''}: "
            f"{len(report.sessions)} sessions forgotten"
        )
        context.log_event(
            dg.AssetObservation(
                asset_key=dg.AssetKey(["marts", "erasure_audit"]),
                metadata={"erasure_id": report.erasure_id, "sessions": len(report.sessions), **report.removed},
            )
        )


@dg.job(description="Forget callers everywhere (run config: `from_file`, a file of identifiers on this host).")
def forget_job():
    forget_callers()


@dg.op(pool=WAREHOUSE_POOL, description="Expire each class of data past its retention (lib/retention.py).")
def expire_old_data(
    context: dg.OpExecutionContext,
    storage: StorageResource,
    retention: RetentionResource,
    result_webhooks: ResultWebhooksResource,
) -> None:
    policy = RetentionPolicy(
        recordings_days=retention.recordings_days,
        text_days=retention.text_days,
        landing_days=retention.landing_days,
        reviews_days=retention.reviews_days,
    )
    if policy == RetentionPolicy():
        context.log.info("no LAYERCODE_RETENTION_* setting: everything is kept")
        return
    try:
        check_policy(policy)
    except ValueError as exc:
        raise dg.Failure(str(exc)) from None
    done = apply_retention(
        warehouse=storage.warehouse,
        paths=storage.paths,
        recordings=storage.recording_store(),
        policy=policy,
        outbox_path=Path(result_webhooks.outbox_path),
    )
    context.log.info(f"expired: {done}")


@dg.job(description="Expire old recordings, text, landing files and reviews (LAYERCODE_RETENTION_*).")
def retention_job():
    expire_old_data()


retention_schedule = dg.ScheduleDefinition(
    name="retention_schedule",
    job=retention_job,
    cron_schedule="40 3 * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily at 03:40: the retention settings applied (nothing expires while they are unset).",
)
