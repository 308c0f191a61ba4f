"""Agents: the org's agents from `GET /v1/agents` (names, type, phone numbers)."""

import asyncio

import dagster as dg
import httpx

from layercode_pipeline.defs.freshness import API_CRON
from layercode_pipeline.defs.resources import WAREHOUSE_POOL, LayercodeAPIResource, StorageResource
from layercode_pipeline.lib.agents import store_agents
from layercode_pipeline.lib.layercode_client import LayercodeAPIError, LayercodeAuthError
from layercode_pipeline.lib.warehouse import scalar

AGENTS = dg.AssetKey("layercode_agents")


@dg.asset(
    key=AGENTS,
    group_name="agents",
    pool=WAREHOUSE_POOL,
    automation_condition=API_CRON,
    kinds={"duckdb", "api"},
    check_specs=[
        dg.AssetCheckSpec(
            "agents_listed",
            asset=AGENTS,
            description="The agents list was fetched this run (LAYERCODE_API_KEY is set and the API answered). "
            "Without it the marts keep the agent names they had, and agent ids stay as they are.",
        )
    ],
    description="raw.layercode_agents: each agent GET /v1/agents lists (with its own record from GET /v1/agents/{id}: "
    "its backend plugin), one row per version of its record, with when that version was first and last "
    "listed. Feeds dim_agents and the agent names in the marts.",
)
def layercode_agents(
    context: dg.AssetExecutionContext, storage: StorageResource, layercode_api: LayercodeAPIResource
) -> dg.MaterializeResult:
    problem = None
    agents: list[dict] = []
    if not layercode_api.configured:  # optional configuration missing: degrade, never block the marts
        problem = "LAYERCODE_API_KEY is not set"
    else:
        try:
            agents = asyncio.run(_list(layercode_api))
        except LayercodeAuthError:
            raise  # 400/401/402/403: what to fix is in the message, and no retry helps
        except (
            LayercodeAPIError,
            httpx.HTTPError,
            ValueError,
        ) as exc:  # still failing after the client's retries: next run
            problem = f"{type(exc).__name__}: {exc}"
    with storage.connect() as con:
        changed, unchanged = store_agents(con, agents) if not problem else (0, 0)
        if problem and layercode_api.configured:
            con.execute(
                "insert into raw.layercode_api_errors (agent_id, session_id, endpoint, reason, error, failed_at) "
                "values ('', '', 'agents', 'agents_list', ?, now())",
                [problem],
            )
        total = scalar(con, "select count(distinct agent_id) from raw.layercode_agents")
    if problem:
        context.log.warning(f"agents not listed: {problem}")
    check = dg.AssetCheckResult(
        check_name="agents_listed",
        passed=problem is None,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"problem": problem or ""},
    )
    return dg.MaterializeResult(
        check_results=[check],
        metadata={
            "listed": len(agents),
            "new_or_changed": changed,
            "unchanged": unchanged,
            "dagster/row_count": int(total),
        },
    )


async def _list(api: LayercodeAPIResource) -> list[dict]:
    """The agents list, each entry merged with its own record (`GET /v1/agents/{id}`: the
    configuration, whose plugins say whether the agent's backend is the customer's webhook or
    Layercode's hosted LLM). An agent whose record cannot be read keeps its list entry."""
    async with api.client() as client:
        listed = await client.list_agents()

        async def detailed(entry: dict) -> dict:
            try:
                record = await client.get_agent(entry["id"])
            except LayercodeAuthError:
                raise
            except (LayercodeAPIError, httpx.HTTPError):
                return entry
            return {**entry, **record} if record else entry

        return list(await asyncio.gather(*(detailed(a) for a in listed)))
