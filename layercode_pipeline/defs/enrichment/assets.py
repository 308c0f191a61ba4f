"""`session_enrichments`: what each call was about, who called, how it went."""

import asyncio
from collections.abc import Callable

import dagster as dg
from pydantic import BaseModel

from layercode_pipeline.defs.backfill.assets import SESSION_DETAILS
from layercode_pipeline.defs.freshness import DOWNSTREAM
from layercode_pipeline.defs.ingest.assets import RAW_EVENTS
from layercode_pipeline.defs.resources import WAREHOUSE_POOL, OpenAIResource, StorageResource
from layercode_pipeline.lib.enrichment.analysis import EnrichmentSettings, build_analysis_model, schema_version
from layercode_pipeline.lib.enrichment.interface import Provider
from layercode_pipeline.lib.enrichment.providers import build_provider
from layercode_pipeline.lib.enrichment.run import enrich_sessions
from layercode_pipeline.lib.warehouse import scalar


class EnrichmentRunConfig(dg.Config):
    provider: str = "auto"  # auto (openai when OPENAI_API_KEY is set, else offline) / openai / offline
    config_file: str | None = None  # topics, compliance checks, custom fields, prices (YAML)
    prompt_version: str | None = None  # overrides the file's; bump to re-run analysis
    redact_pii: bool = True
    concurrency: int = 8
    max_calls: int | None = None
    max_usd: float | None = None


def enrichment_setup(
    openai: OpenAIResource, config: EnrichmentRunConfig | None = None
) -> tuple[EnrichmentSettings, type[BaseModel], Callable[[], Provider]]:
    """The settings, the answer schema and a provider factory of an enrichment (the run's
    configuration, or the defaults: what the express result path analyses with)."""
    config = config or EnrichmentRunConfig()
    settings = EnrichmentSettings.load(config.config_file or openai.enrichment_config)
    if config.prompt_version:
        settings.prompt_version = config.prompt_version
    schema = build_analysis_model(settings)

    def make_provider() -> Provider:
        return build_provider(
            config.provider,
            settings,
            schema,
            api_key=openai.api_key,
            model=openai.model,
            base_url=openai.base_url,
            timeout_s=openai.timeout_s,
            max_retries=openai.max_retries,
        )

    return settings, schema, make_provider


@dg.asset(
    key="session_enrichments",
    deps=[RAW_EVENTS, SESSION_DETAILS],
    group_name="enrichment",
    pool=WAREHOUSE_POOL,
    automation_condition=DOWNSTREAM,
    check_specs=[
        dg.AssetCheckSpec(
            "no_enrichment_errors",
            asset="session_enrichments",
            description="No provider call of this run failed or answered outside the schema (those "
            "are error rows, retried on the next run).",
        ),
        dg.AssetCheckSpec(
            "enrichment_coverage",
            asset="session_enrichments",
            description="Every session with a transcript has an answer for the current provider, "
            "model, prompt version and schema (failures and budget stops leave gaps).",
        ),
    ],
    kinds={"duckdb", "openai"},
    description="enrichment.session_enrichments: summary, caller name, sentiment, outcome, topics, quality, "
    "compliance flags, action items and custom fields per session, cached by transcript, prompt "
    "version, schema version and model. Rows say which provider made them.",
)
def session_enrichments(
    context: dg.AssetExecutionContext, config: EnrichmentRunConfig, storage: StorageResource, openai: OpenAIResource
) -> dg.MaterializeResult:
    settings, schema, make_provider = enrichment_setup(openai, config)
    try:
        provider = make_provider()
    except ValueError as exc:
        raise dg.Failure(str(exc)) from None
    if provider.name == "offline":
        context.log.info("Enriching with the offline provider (rules + VADER), labelled 'offline'.")

    async def run(con):
        try:
            return await enrich_sessions(
                con,
                provider,
                settings,
                schema_version(schema),
                redact_pii=config.redact_pii,
                concurrency=config.concurrency,
                max_calls=config.max_calls,
                max_usd=config.max_usd,
                answer_cache=storage.answer_cache(),
            )
        finally:
            await provider.aclose()

    with storage.connect() as con:
        stats = asyncio.run(run(con))
        total = scalar(con, "select count(*) from enrichment.session_enrichments")
    for err in stats.errors[:10]:
        context.log.warning(err)
    if stats.skipped_budget:
        context.log.warning(f"budget reached: {stats.skipped_budget} sessions left for the next run")
    missing = stats.failed + stats.skipped_budget
    coverage = 1.0 if not stats.candidates else (stats.candidates - missing) / stats.candidates
    checks = [
        dg.AssetCheckResult(
            check_name="no_enrichment_errors",
            passed=stats.failed == 0,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"errors": stats.failed, "examples": dg.MetadataValue.json(stats.errors[:10])},
        ),
        dg.AssetCheckResult(
            check_name="enrichment_coverage",
            passed=missing == 0,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "coverage": dg.MetadataValue.float(round(coverage, 4)),
                "sessions_without_answer": missing,
                "failed": stats.failed,
                "left_by_budget": stats.skipped_budget,
            },
        ),
    ]
    return dg.MaterializeResult(
        check_results=checks,
        metadata={
            "provider": provider.name,
            "model": provider.model,
            "prompt_version": settings.prompt_version,
            "schema_version": schema_version(schema),
            "candidates": stats.candidates,
            "enriched": stats.enriched,
            "cached": stats.cached,
            "failed": stats.failed,
            "skipped_budget": stats.skipped_budget,
            "llm_calls": stats.calls,
            "input_tokens": stats.input_tokens,
            "output_tokens": stats.output_tokens,
            "cost_usd": dg.MetadataValue.float(stats.cost_usd),
            "dagster/row_count": total,
        },
    )
