"""A warehouse with a large history, built fast: one simulated day goes through the real path
(landing segment -> the pipeline's ingest -> the offline enrichment), then SQL copies that day
back through the calendar (new session, conversation and turn ids; every timestamp, in the
columns and inside the landed bodies, moved back by whole days).

Used by bench/scale_bench.py and bench/freshness_bench.py --steady.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from layercode_pipeline.lib.enrichment.analysis import EnrichmentSettings, build_analysis_model, schema_version
from layercode_pipeline.lib.enrichment.providers import build_provider
from layercode_pipeline.lib.enrichment.run import enrich_sessions
from layercode_pipeline.lib.ingest import ingest_landing
from layercode_pipeline.lib.warehouse import Warehouse, scalar
from layercode_pipeline.simulator import generate_batch, write_segment

DAY_MS = 86_400_000


def land_calls(landing: Path, calls: int, *, seed: int, base_time: datetime, name: str) -> int:
    """`calls` simulated calls as one sealed landing segment (the listener's format). Returns
    the number of sessions."""
    return write_segment(
        landing, generate_batch(calls, seed=seed, base_time=base_time), received_at=base_time, name=name
    )


def enrich_offline(con) -> int:
    settings = EnrichmentSettings.load(None)
    schema = build_analysis_model(settings)
    provider = build_provider("offline", settings, schema, api_key=None, model="offline")

    async def run():
        try:
            return await enrich_sessions(con, provider, settings, schema_version(schema))
        finally:
            await provider.aclose()

    return asyncio.run(run()).enriched


# One copy of the seed day per row of `copies`: ids get a suffix, times move back `k` days.
# Every 24-character id in a body (session, conversation, turn and assistant turn ids) is
# suffixed; the ISO dates and the transcript's epoch-ms timestamps are shifted.
COPY_EVENTS = """
insert into raw.layercode_events
select event_key || '~' || k, received_at - to_days(k::int), agent_id, event_type, content_sha256,
       session_id || 'h' || k, conversation_id || 'h' || k, turn_id || 'h' || k,
       case when event_type = 'session.end' and json_type(b, '$.transcript') = 'ARRAY' then
            json_merge_patch(b, json_object('transcript', to_json(list_transform(
                json_extract(b, '$.transcript[*]'),
                lambda x: json_merge_patch(x, json_object('timestamp',
                        try_cast(x->>'$.timestamp' as bigint) - k * {day_ms}))))))::varchar
            else b end,
       validation_error, writer_id, source, source_file, ingested_at - to_days(k::int),
       md5_number(event_key || '~' || k), headers
from (
    select e.*, k, regexp_replace(
                  regexp_replace(body, '"([a-z0-9]{{24}})"', '"\\1h' || k || '"', 'g'),
                  '"(\\d{{4}}-\\d{{2}}-\\d{{2}})T',
                  '"' || strftime(date '{seed_day}' - to_days(k::int), '%Y-%m-%d') || 'T', 'g') as b
    from seed.raw.layercode_events e, range({first}, {last}) r(k)
)
"""

COPY_ENRICHMENTS = """
insert into enrichment.session_enrichments
select e.* replace (e.session_id || 'h' || k as session_id, e.enriched_at - to_days(k::int) as enriched_at)
from seed.enrichment.session_enrichments e, range({first}, {last}) r(k)
"""


def build_history(data_dir: Path, sessions: int, *, days: int = 365, seed: int = 7, log=print) -> dict[str, float]:
    """A warehouse at `data_dir`/warehouse.duckdb with about `sessions` sessions over `days`
    days ending yesterday (UTC). Returns the sessions and events built and the seconds taken."""
    t0 = time.perf_counter()
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    seed_day = today - timedelta(days=1)
    per_day = max(1, sessions // days)
    calls = max(1, round(per_day / 1.12))  # the simulator reconnects ~12% of calls (a second session)
    seed_dir = data_dir / "seed"
    seed_sessions = land_calls(
        seed_dir / "landing", calls, seed=seed, base_time=seed_day.replace(hour=9), name="seed-day"
    )
    with Warehouse.at(None, data_dir=seed_dir).open_for_writing() as con:
        ingest_landing(con, seed_dir / "landing")
        enrich_offline(con)
    log(f"  seed day: {seed_sessions:,} sessions simulated, ingested and enriched ({time.perf_counter() - t0:.1f} s)")
    copies = max(1, round(sessions / seed_sessions))
    with Warehouse.at(None, data_dir=data_dir).open_for_writing() as con:
        con.execute(f"attach '{seed_dir / 'warehouse.duckdb'}' as seed (read_only)")
        from layercode_pipeline.lib.enrichment.store import ensure_enrichment_schema

        ensure_enrichment_schema(con)
        step = 30  # copies per statement: bounded memory
        for first in range(0, copies, step):
            last = min(copies, first + step)
            params = {"first": first, "last": last, "day_ms": DAY_MS, "seed_day": f"{seed_day:%Y-%m-%d}"}
            con.execute(COPY_EVENTS.format(**params))
            con.execute(COPY_ENRICHMENTS.format(**params))
        con.execute("detach seed")
        con.execute("checkpoint")
        built = {
            "sessions": scalar(con, "select count(distinct session_id) from raw.layercode_events"),
            "events": scalar(con, "select count(*) from raw.layercode_events"),
            "days": copies,
            "seconds": time.perf_counter() - t0,
        }
    log(
        f"  history: {built['sessions']:,} sessions, {built['events']:,} events over {copies} days "
        f"({built['seconds']:.0f} s)"
    )
    return built


def catch_up_hourly(data_dir: Path, log=print) -> float:
    """The hourly assets' first run over the history (the agents list, REST details for gaps,
    recordings: no REST key here, so they record what waits for one), as on a pipeline that has
    been running: their catch-up is not steady traffic. Returns the seconds taken."""
    import dagster as dg

    from layercode_pipeline.config import Settings
    from layercode_pipeline.defs.agents.assets import layercode_agents
    from layercode_pipeline.defs.backfill.assets import layercode_session_details
    from layercode_pipeline.defs.recordings.assets import layercode_recordings
    from layercode_pipeline.defs.resources import resources_from_settings

    t0 = time.perf_counter()
    resources = resources_from_settings(Settings.load(data_dir=str(data_dir)))
    result = dg.materialize(
        [layercode_agents, layercode_session_details, layercode_recordings],
        resources={k: resources[k] for k in ("storage", "layercode_api")},
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
    )
    if not result.success:
        raise RuntimeError("the hourly assets' catch-up over the history failed")
    seconds = time.perf_counter() - t0
    log(f"  hourly assets' first run over the history (agents, REST details, recordings): {seconds:.0f} s")
    return seconds
