"""Enrich every session whose transcript is known, once per cache key.

cache key = sha256(normalised transcript, prompt version, schema version, provider, model).
A session whose key already has a successful row makes no call; bumping the prompt version,
the schema (topics, checks, custom fields) or the model makes a new key, so the session is
enriched again and the old rows stay, queryable by version.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime

import duckdb
import orjson

from layercode_pipeline.lib.enrichment.analysis import EnrichmentSettings, system_prompt
from layercode_pipeline.lib.enrichment.answer_cache import AnswerCache
from layercode_pipeline.lib.enrichment.interface import Analysis, Provider
from layercode_pipeline.lib.enrichment.redact import redact
from layercode_pipeline.lib.enrichment.store import (
    CALL_FIELDS,
    answer_columns,
    answered_sessions,
    answers_by_cache_key,
    write_enrichments,
)
from layercode_pipeline.lib.progress import report_progress
from layercode_pipeline.lib.transcripts import (
    TurnText,
    render,
    transcript_sha256,
    turns_from_rest,
    turns_from_session_end,
)

# The sessions a run looks at, so its cost follows the new data, not the history: those whose
# transcript landed after the newest enrichment row was written (a first transcript, a newer
# session.end, a REST record), and those with no successful answer under the current prompt
# version, schema, provider and model (a failed call is asked again; a version bump re-runs all).
CANDIDATES_SQL = """
create or replace temp table enrichment_candidates as
with since as (
    select coalesce(max(enriched_at), '-infinity'::timestamptz) as t from enrichment.session_enrichments
), with_transcript as (
    select session_id, ingested_at as loaded_at from raw.layercode_events
    where event_type = 'session.end' and session_id is not null and validation_error is null
    union all
    select session_id, fetched_at from raw.layercode_session_details where http_status = 200
)
select session_id from with_transcript where loaded_at > (select t from since)
union
(select session_id from with_transcript
 except
 select session_id from enrichment.session_enrichments
 where error is null and prompt_version = $prompt_version and schema_version = $schema_version
   and provider = $provider and model = $model)
"""

EVENTS_SINCE_SQL = """
select min(ingested_at) from raw.layercode_events
where session_id in (select session_id from enrichment_candidates)
"""

TRANSCRIPTS_SQL = """
with ends as (
    select session_id, agent_id, body->'$.transcript' as transcript
    from raw.layercode_events where event_type = 'session.end' and session_id is not null and validation_error is null
      and session_id in (select session_id from enrichment_candidates) and ingested_at >= $events_since
    qualify row_number() over (partition by session_id order by received_at desc) = 1
), rest as (
    select session_id, agent_id, record->'$.transcript' as transcript
    from raw.layercode_session_details where http_status = 200
      and session_id in (select session_id from enrichment_candidates)
    qualify row_number() over (partition by session_id order by fetched_at desc) = 1
)
select coalesce(e.session_id, r.session_id) as session_id, coalesce(e.agent_id, r.agent_id) as agent_id,
       e.transcript as webhook_transcript, r.transcript as rest_transcript
from ends e full outer join rest r using (session_id)
order by 1
"""


@dataclass
class SessionTranscript:
    session_id: str
    agent_id: str | None
    turns: list[TurnText]


@dataclass
class RunStats:
    candidates: int = 0
    enriched: int = 0
    cached: int = 0
    failed: int = 0
    skipped_budget: int = 0
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    errors: list[str] = field(default_factory=list)


def load_transcripts(
    con: duckdb.DuckDBPyConnection, *, prompt_version: str, schema_version: str, provider: str, model: str
) -> list[SessionTranscript]:
    """The transcripts of the sessions this run must look at (`CANDIDATES_SQL`)."""
    con.execute(
        CANDIDATES_SQL,
        {"prompt_version": prompt_version, "schema_version": schema_version, "provider": provider, "model": model},
    )
    # The candidates' oldest event load, a constant DuckDB prunes the events table's row groups
    # with (events are appended as loaded): an IN filter on random session ids prunes nothing,
    # and the scan would read every session.end body in the history (0.9 s against 0.03 s at 1M).
    (events_since,) = con.execute(EVENTS_SINCE_SQL).fetchone() or (None,)
    out = []
    for session_id, agent_id, webhook, rest in con.execute(
        TRANSCRIPTS_SQL, {"events_since": events_since or datetime.max.replace(tzinfo=UTC)}
    ).fetchall():
        webhook_items = orjson.loads(webhook) if webhook else None
        turns = (
            turns_from_session_end(webhook_items)
            if isinstance(webhook_items, list)
            else turns_from_rest(orjson.loads(rest) if rest else None)
        )
        out.append(SessionTranscript(session_id, agent_id, turns))
    return out


def cache_key(transcript_hash: str, prompt_version: str, schema_version: str, provider: str, model: str) -> str:
    return hashlib.sha256(
        "|".join((transcript_hash, prompt_version, schema_version, provider, model)).encode()
    ).hexdigest()


async def enrich_sessions(
    con: duckdb.DuckDBPyConnection,
    provider: Provider,
    settings: EnrichmentSettings,
    schema_version: str,
    *,
    redact_pii: bool = True,
    concurrency: int = 8,
    max_calls: int | None = None,
    max_usd: float | None = None,
    max_output_tokens: int = 800,
    answer_cache: AnswerCache | None = None,
) -> RunStats:
    stats = RunStats()
    sessions = load_transcripts(
        con,
        prompt_version=settings.prompt_version,
        schema_version=schema_version,
        provider=provider.name,
        model=provider.model,
    )
    stats.candidates = len(sessions)
    hashes = {s.session_id: transcript_sha256(s.turns) for s in sessions}
    keys = {
        sid: cache_key(t_hash, settings.prompt_version, schema_version, provider.name, provider.model)
        for sid, t_hash in hashes.items()
    }
    # Content-addressed: a key answered once is never asked again, for any session.
    have = answered_sessions(con, list(keys))
    answered = answers_by_cache_key(con, sorted(set(keys.values())))
    # answers the express result path already made (it analyses from the landing while the
    # warehouse is busy): written here with the tokens and cost of that call, asked no more
    made_elsewhere = answer_cache.get(set(keys.values()) - set(answered)) if answer_cache else {}
    groups: dict[str, list[tuple[SessionTranscript, str]]] = {}
    rows: list[dict] = []
    for s in sessions:
        t_hash, key = hashes[s.session_id], keys[s.session_id]
        if (s.session_id, key) in have:
            stats.cached += 1
        elif key in answered:  # same transcript as another session's: reuse its answer, no call
            stats.cached += 1
            # the call was paid for by the session that made it: this row carries no tokens or cost
            rows.append(
                {
                    **answered[key],
                    "session_id": s.session_id,
                    "agent_id": s.agent_id,
                    "input_tokens": 0,
                    "output_tokens": 0,
                    "cost_usd": 0.0,
                }
            )
        elif key in made_elsewhere:
            stats.cached += 1
            row = {**made_elsewhere[key], "session_id": s.session_id, "agent_id": s.agent_id}
            rows.append(row)
            # the call is counted once, on the first session that took it over
            answered[key] = {k: v for k, v in row.items() if k in CALL_FIELDS}
        else:
            groups.setdefault(key, []).append((s, t_hash))

    to_analyse = sum(len(members) for members in groups.values())
    sem = asyncio.Semaphore(concurrency)
    budget_lock = asyncio.Lock()
    reserved_usd = 0.0
    prompt_chars = len(system_prompt(settings))

    async def one(key: str, members: list[tuple[SessionTranscript, str]]) -> None:
        nonlocal reserved_usd
        s, t_hash = members[0]
        text = render(s.turns)
        sent = redact(text) if redact_pii else text
        async with sem:
            async with budget_lock:  # reserve before calling, so concurrent calls cannot overshoot
                if max_calls is not None and stats.calls >= max_calls:
                    stats.skipped_budget += len(members)
                    return
                estimate = settings.cost_usd(provider.model, (prompt_chars + len(sent)) // 3, max_output_tokens) or 0.0
                if max_usd is not None and reserved_usd + estimate > max_usd:
                    stats.skipped_budget += len(members)
                    return
                stats.calls += 1
                reserved_usd += estimate
            try:
                result = await provider.analyse(s.turns, sent)
            except Exception as exc:  # noqa: BLE001 - one bad session is an error row, the run goes on
                result = Analysis(None, error=f"{type(exc).__name__}: {str(exc)[:300]}")
            cost = settings.cost_usd(provider.model, result.input_tokens, result.output_tokens)
            async with budget_lock:
                reserved_usd += (cost or 0.0) - estimate
        stats.input_tokens += result.input_tokens
        stats.output_tokens += result.output_tokens
        stats.cost_usd += cost or 0.0
        for i, (member, member_hash) in enumerate(members):
            if result.error:
                stats.failed += 1
                stats.errors.append(f"{member.session_id}: {result.error}")
            else:
                stats.enriched += 1
            report_progress("sessions analysed", stats.enriched + stats.failed, to_analyse)
            # the call is paid once: later sessions sharing the transcript carry no tokens or cost
            rows.append(
                enrichment_row(
                    member,
                    member_hash,
                    key,
                    provider,
                    settings,
                    schema_version,
                    result,
                    cost if i == 0 else 0.0,
                    first=i == 0,
                )
            )

    await asyncio.gather(*(one(k, m) for k, m in groups.items()))
    write_enrichments(con, rows)
    stats.cost_usd = round(stats.cost_usd, 6)
    return stats


def enrichment_row(
    s: SessionTranscript,
    t_hash: str,
    key: str,
    provider: Provider,
    settings: EnrichmentSettings,
    schema_version: str,
    a: Analysis,
    cost: float | None,
    first: bool = True,
) -> dict:
    return {
        "session_id": s.session_id,
        "agent_id": s.agent_id,
        "cache_key": key,
        "transcript_sha256": t_hash,
        "provider": provider.name,
        "model": provider.model,
        "prompt_version": settings.prompt_version,
        "schema_version": schema_version,
        **answer_columns(a.result),
        "input_tokens": a.input_tokens if first else 0,
        "output_tokens": a.output_tokens if first else 0,
        "cost_usd": cost,
        "latency_ms": a.latency_ms,
        "error": a.error,
    }
