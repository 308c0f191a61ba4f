"""REST backfill: `raw.layercode_session_details` for every session with a gap."""

import asyncio
from pathlib import Path

import dagster as dg

from layercode_pipeline.contract.events import rest_record_drift, summarise_drift
from layercode_pipeline.defs.freshness import API_CRON
from layercode_pipeline.defs.ingest.assets import RAW_EVENTS
from layercode_pipeline.defs.resources import WAREHOUSE_POOL, LayercodeAPIResource, StorageResource
from layercode_pipeline.lib.backfill import DetailRequest, fetch_details, sessions_needing_details, store_details
from layercode_pipeline.lib.warehouse import scalar

SESSION_DETAILS = dg.AssetKey("layercode_session_details")


class BackfillConfig(dg.Config):
    """Leave empty for the automatic path. To ask for specific sessions, give `agent_id`
    and `session_ids` and/or `session_ids_file` (one id per line)."""

    grace_minutes: int = 15
    agent_id: str | None = None
    session_ids: list[str] = []
    session_ids_file: str | None = None
    automatic: bool = True  # also fill the gaps found in the landed events


def requested_sessions(config: BackfillConfig) -> list[DetailRequest]:
    ids = list(config.session_ids)
    if config.session_ids_file:
        ids += [
            line.strip()
            for line in Path(config.session_ids_file).read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
    if ids and not config.agent_id:
        raise dg.Failure("session_ids need agent_id: the REST API addresses sessions by agent")
    return [DetailRequest(config.agent_id, sid, "requested") for sid in dict.fromkeys(ids)]  # type: ignore[arg-type]


@dg.asset(
    key=SESSION_DETAILS,
    deps=[RAW_EVENTS],
    group_name="backfill",
    pool=WAREHOUSE_POOL,
    automation_condition=API_CRON,
    kinds={"duckdb", "api"},
    check_specs=[
        dg.AssetCheckSpec(
            "no_api_errors",
            asset=SESSION_DETAILS,
            description="Every REST call of this run was answered (after retries; failures are rows in "
            "raw.layercode_api_errors and are asked again next run), and none waits for LAYERCODE_API_KEY.",
        ),
        dg.AssetCheckSpec(
            "no_rest_shape_drift",
            asset=SESSION_DETAILS,
            description="Every REST session record fetched in this run has the shape the wire contract describes "
            "(layercode_pipeline/contract/events.py, RestSession), and every transcript entry is readable: "
            "an exchange (user_message / assistant_message) or an utterance (role and text). A failure "
            "lists what is new, with counts and example sessions; an unreadable entry gives no turns.",
        ),
    ],
    description="The REST record of each session with a gap (no session.end after the grace period, or an "
    "unresolved recording) or asked for by a user, stored as it came with its fetch time and status.",
)
def layercode_session_details(
    context: dg.AssetExecutionContext,
    config: BackfillConfig,
    storage: StorageResource,
    layercode_api: LayercodeAPIResource,
) -> dg.MaterializeResult:
    requests = requested_sessions(config)
    with storage.connect() as con:
        if config.automatic:
            asked = {(r.agent_id, r.session_id) for r in requests}
            requests += [
                r
                for r in sessions_needing_details(con, config.grace_minutes)
                if (r.agent_id, r.session_id) not in asked
            ]
        waiting_for_key = [] if layercode_api.configured else requests
        if waiting_for_key:
            if any(r.reason == "requested" for r in requests):  # a user asked for these: tell them now
                raise dg.Failure(f"{len(requests)} sessions were requested but LAYERCODE_API_KEY is not set")
            # optional configuration missing: degrade, never block the marts (they refresh from webhooks)
            context.log.warning(
                f"{len(requests)} sessions need their REST record but LAYERCODE_API_KEY is not "
                "set; they are fetched on the first run with a key"
            )
            requests = []
        outcomes = asyncio.run(_fetch(layercode_api, requests)) if requests else []
        found, not_found = store_details(con, outcomes, storage.minimisation())
        total = scalar(con, "select count(*) from raw.layercode_session_details")
    errors = [o for o in outcomes if o.error]
    for o in errors[:10]:
        context.log.warning(f"session {o.request.session_id}: {o.error}")
    reasons: dict[str, int] = {}
    for r in requests:
        reasons[r.reason] = reasons.get(r.reason, 0) + 1
    check = dg.AssetCheckResult(
        check_name="no_api_errors",
        passed=not errors and not waiting_for_key,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "errors": len(errors),
            "waiting_for_api_key": len(waiting_for_key),
            "examples": dg.MetadataValue.json(
                [{"session_id": o.request.session_id, "error": o.error} for o in errors[:5]]
            ),
        },
    )
    drifting, drift = summarise_drift(
        (o.request.session_id, rest_record_drift(o.fetch.record))
        for o in outcomes
        if o.fetch is not None and o.fetch.record is not None
    )
    shape = dg.AssetCheckResult(
        check_name="no_rest_shape_drift",
        passed=not drift,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"records_with_drift": drifting, "drift": dg.MetadataValue.json(drift[:50])},
    )
    if drift:
        context.log.warning(f"{drifting} REST records have a shape the contract does not describe: {drift[:3]}")
    return dg.MaterializeResult(
        check_results=[check, shape],
        metadata={
            "requested": len(requests),
            "found": found,
            "not_found": not_found,
            "errors": len(errors),
            "by_reason": dg.MetadataValue.json(reasons),
            "dagster/row_count": total,
        },
    )


async def _fetch(api: LayercodeAPIResource, requests: list[DetailRequest]):
    async with api.client() as client:
        return await fetch_details(client, requests)
