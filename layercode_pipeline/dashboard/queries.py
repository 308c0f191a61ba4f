"""The dashboard's queries: each opens the serving copy read-only for one query and closes it
(a publish renames a new file over the old one; the dashboard never holds a lock the pipeline
needs). Results are polars frames."""

from __future__ import annotations

import json
from datetime import UTC
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

REFRESH_S = 10  # how often an open page reads the serving copy again
ALL = "__all__"


def frame(serving: Path, sql: str, params: list[Any] | None = None) -> pl.DataFrame:
    """One query against the serving copy, opened read-only for this query only."""
    con = duckdb.connect(str(serving), read_only=True)
    try:
        cursor = con.execute(sql, params or [])
        names = [d[0] for d in cursor.description]
        rows = cursor.fetchall()
    finally:
        con.close()
    return pl.DataFrame(rows, schema=names, orient="row", infer_schema_length=None)


def _agent_filter(agent: str | None) -> tuple[str, list[Any]]:
    return ("", []) if not agent or agent == ALL else (" and agent_id = ?", [agent])


def kpis(serving: Path, agent: str | None) -> dict[str, Any]:
    """The headline numbers, over the agent's (or every agent's) calls."""
    where, params = _agent_filter(agent)
    daily = frame(
        serving,
        f"""
        select coalesce(sum(calls), 0) as calls, coalesce(sum(sessions), 0) as sessions,
               coalesce(sum(speech_minutes), 0) as speech_minutes,
               sum(interrupted_turns) / nullif(sum(assistant_turns_observed), 0) as interruption_rate,
               sum(outcome_resolved) / nullif(sum(sessions_analysed), 0) as containment_rate,
               sum(sessions_with_recording) / nullif(sum(sessions_recording_expected), 0) as recording_coverage,
               coalesce(sum(estimated_cost_usd), 0) as estimated_cost_usd
        from marts.agg_daily_call_metrics where true{where}""",
        params,
    ).row(0, named=True)
    turns = frame(
        serving,
        f"""
        select quantile_cont(latency_ms, 0.5) as p50, quantile_cont(latency_ms, 0.95) as p95
        from marts.fct_turns where role = 'assistant' and interrupted is not true{where}""",
        params,
    ).row(0, named=True)
    # calls analysed by an LLM (not the offline rules): without any, there is no LLM cost to show
    llm = frame(
        serving,
        f"""select count(*) filter (where enrichment_provider is not null and enrichment_provider <> 'offline') as n
            from marts.fct_sessions where true{where}""",
        params,
    ).row(0, named=True)
    return {
        **daily,
        "turn_latency_ms_p50": turns["p50"],
        "turn_latency_ms_p95": turns["p95"],
        "llm_analysed": llm["n"],
    }


def daily(serving: Path, agent: str | None) -> pl.DataFrame:
    """One row per day and agent. `agent` labels a series: the agent's name, with the start of
    its id when two agents share a name (the series themselves are keyed by `agent_id`)."""
    where, params = _agent_filter(agent)
    return frame(
        serving,
        f"""
        with named as (
            select *, coalesce(agent_name, agent_id) as name,
                   count(distinct agent_id) over (partition by coalesce(agent_name, agent_id)) as namesakes
            from marts.agg_daily_call_metrics where true{where})
        select call_date, agent_id,
               case when namesakes > 1 then name || ' (' || left(agent_id, 6) || ')' else name end as agent,
               calls, speech_minutes, duration_ms_p50 / 1000 as duration_s_p50,
               latency_ms_p50, latency_ms_p95, interruption_rate, recording_coverage,
               sentiment_positive, sentiment_neutral, sentiment_negative, sentiment_mixed,
               outcome_resolved, outcome_unresolved, outcome_escalated, outcome_abandoned, outcome_voicemail
        from named order by call_date, agent, agent_id""",
        params,
    )


def agent_ids(serving: Path) -> list[str]:
    """Every agent's id in the serving copy, sorted."""
    return frame(
        serving, "select distinct agent_id from marts.agg_daily_call_metrics where agent_id is not null order by 1"
    )["agent_id"].to_list()


def lowest_quality(serving: Path, agent: str | None, limit: int = 15) -> pl.DataFrame:
    where, params = _agent_filter(agent)
    return frame(
        serving,
        f"""
        select session_id, coalesce(agent_name, agent_id) as agent, started_at, quality_score, sentiment, outcome,
               interruptions, latency_ms, summary
        from marts.fct_sessions where quality_score is not null{where}
        order by quality_score, sentiment_score nulls last, session_id limit {int(limit)}""",
        params,
    )


def transcript(serving: Path, session_id: str) -> tuple[dict[str, Any] | None, pl.DataFrame]:
    head = frame(
        serving,
        """
        select session_id, coalesce(agent_name, agent_id) as agent, started_at, duration_ms, caller_name, sentiment,
               outcome, topics, quality_score, summary, interruptions, latency_ms, turn_latency_ms_p50, turn_latency_ms_p95,
               caller_talk_share, enrichment_provider, enrichment_model, enrichment_prompt_version
        from marts.fct_sessions where session_id = ?""",
        [session_id],
    )
    turns = frame(
        serving,
        """
        select position, role, text, offset_ms, latency_ms, response_gap_ms, interrupted, words_heard, text_heard
        from marts.fct_turns where session_id = ? order by position""",
        [session_id],
    )
    row = head.row(0, named=True) if head.height else None
    if row is not None and isinstance(row["topics"], str):  # a JSON list in the serving copy
        row["topics"] = json.loads(row["topics"])
    return row, turns


def agents(serving: Path) -> list[dict[str, str]]:
    rows = frame(
        serving, "select agent_id, coalesce(agent_name, agent_id) as label from marts.dim_agents order by label"
    )
    return [{"label": "All agents", "value": ALL}] + [
        {"label": r["label"], "value": r["agent_id"]} for r in rows.iter_rows(named=True)
    ]


def fmt(value: Any, kind: str = "") -> str:
    """A figure as the dashboard shows it: – for unknown, then by kind (pct, ms, usd)."""
    if value is None:
        return "–"
    if kind == "pct":
        return f"{value * 100:.1f} %"
    if kind == "ms":
        return f"{value:,.0f} ms"
    if kind == "usd":
        return f"${value:,.4f}"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def local_time(value: Any):
    """A moment shown in the reader's own time zone: the page has it in UTC, and
    assets/workbench.js rewrites it with the browser's locale and zone."""
    from dash import html

    if value is None:
        return "–"
    utc = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    return html.Time(
        utc.strftime("%Y-%m-%d %H:%M UTC"), dateTime=utc.isoformat(), className="local-time", title=utc.isoformat()
    )


def has_table(serving: Path, table: str) -> bool:
    """Whether the serving copy has `marts.<table>` (an older publish may not)."""
    found = frame(
        serving,
        "select count(*) as n from duckdb_tables() where schema_name = 'marts' and table_name = ?",
        [table],
    )
    return bool(found["n"][0])


def recording(serving: Path, session_id: str) -> dict[str, Any] | None:
    """The session's kept recording (uri and audio figures), or None."""
    if not has_table(serving, "fct_recordings"):
        return None
    found = frame(
        serving,
        """
        select recording_uri, duration_s, reported_duration_s, silence_share, longest_silence_s, clipped_share,
               loudness_dbfs, is_silent, is_clipped, length_mismatch
        from marts.fct_recordings where session_id = ? and download_status = 'downloaded'""",
        [session_id],
    )
    return found.row(0, named=True) if found.height else None


def session_exists(serving: Path, session_id: str) -> bool:
    return bool(
        frame(serving, "select count(*) as n from marts.fct_sessions where session_id = ?", [session_id])["n"][0]
    )
