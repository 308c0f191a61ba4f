"""`layercode-pipeline dashboard`: a read-only dashboard over the serving copy.

Built on Dash (Plotly's dashboard framework: a Flask server and React components, no build
step, light to install, and every figure and number is plain DOM a headless browser can
check). It reads `serving/analytics.duckdb` only, never the warehouse: each page load and
each refresh opens the file read-only and closes it, so a publish (which renames a new file
over the old one) is picked up on the next refresh and the dashboard never holds a lock the
pipeline needs. Query results are polars frames.

Pages: `/` (calls and minutes per day by agent; duration, turn latency p50/p95 and
interruption rate over time; outcome and sentiment mix; recording coverage; the
lowest-quality calls with their summary) and `/call/<session_id>` (the transcript, turn by
turn, with each reply's latency and the barge-ins marked).
"""

from __future__ import annotations

from html import escape as html_escape
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote, unquote

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
    return {**daily, "turn_latency_ms_p50": turns["p50"], "turn_latency_ms_p95": turns["p95"]}


def daily(serving: Path, agent: str | None) -> pl.DataFrame:
    where, params = _agent_filter(agent)
    return frame(
        serving,
        f"""
        select call_date, coalesce(agent_name, agent_id) as agent, calls, speech_minutes, duration_ms_p50,
               turn_latency_ms_p50, turn_latency_ms_p95, interruption_rate, recording_coverage,
               sentiment_positive, sentiment_neutral, sentiment_negative, sentiment_mixed,
               outcome_resolved, outcome_unresolved, outcome_escalated, outcome_abandoned, outcome_voicemail
        from marts.agg_daily_call_metrics where true{where} order by call_date, agent""",
        params,
    )


def lowest_quality(serving: Path, agent: str | None, limit: int = 15) -> pl.DataFrame:
    where, params = _agent_filter(agent)
    return frame(
        serving,
        f"""
        select session_id, coalesce(agent_name, agent_id) as agent, started_at, quality_score, sentiment, outcome,
               interruptions, turn_latency_ms_p95, summary
        from marts.fct_sessions where quality_score is not null{where}
        order by quality_score, sentiment_score nulls last, session_id limit {int(limit)}""",
        params,
    )


def transcript(serving: Path, session_id: str) -> tuple[dict[str, Any] | None, pl.DataFrame]:
    head = frame(
        serving,
        """
        select session_id, coalesce(agent_name, agent_id) as agent, started_at, duration_ms, caller_name, sentiment,
               outcome, quality_score, summary, interruptions, turn_latency_ms_p50, turn_latency_ms_p95,
               caller_talk_share
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
    return (head.row(0, named=True) if head.height else None), turns


def agents(serving: Path) -> list[dict[str, str]]:
    rows = frame(
        serving, "select agent_id, coalesce(agent_name, agent_id) as label from marts.dim_agents order by label"
    )
    return [{"label": "All agents", "value": ALL}] + [
        {"label": r["label"], "value": r["agent_id"]} for r in rows.iter_rows(named=True)
    ]


def _fmt(value: Any, kind: str = "") -> str:
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


def create_app(serving: Path, refresh_s: float = REFRESH_S):
    """The Dash app over `serving` (a path to analytics.duckdb)."""
    import dash
    import plotly.graph_objects as go  # graph objects need no numpy (Plotly Express would)
    from dash import Input, Output, dcc, html

    app = dash.Dash(__name__, title="Layercode call analytics", suppress_callback_exceptions=True)
    app.layout = html.Div(
        [
            dcc.Location(id="url"),
            dcc.Interval(id="refresh", interval=int(refresh_s * 1000)),
            html.H1("Layercode call analytics", style={"fontFamily": "sans-serif"}),
            html.Div(id="page"),
        ],
        style={"margin": "1.5rem", "fontFamily": "sans-serif"},
    )

    def kpi(label: str, value: str, kpi_id: str):
        return html.Div(
            [
                html.Div(label, style={"color": "#666", "fontSize": "0.85rem"}),
                html.Div(value, id=kpi_id, style={"fontSize": "1.6rem", "fontWeight": 600}),
            ],
            style={"padding": "0.6rem 1rem", "border": "1px solid #ddd", "borderRadius": "6px"},
        )

    def overview(agent: str | None):
        if not serving.exists():
            return html.P(f"No serving copy yet at {serving}: run the pipeline (layercode-pipeline demo).", id="empty")
        k, d = kpis(serving, agent), daily(serving, agent)
        cards = html.Div(
            [
                kpi("Calls", _fmt(k["calls"]), "kpi-calls"),
                kpi("Sessions", _fmt(k["sessions"]), "kpi-sessions"),
                kpi("Minutes of speech", _fmt(k["speech_minutes"]), "kpi-minutes"),
                kpi("Turn latency p50", _fmt(k["turn_latency_ms_p50"], "ms"), "kpi-latency-p50"),
                kpi("Turn latency p95", _fmt(k["turn_latency_ms_p95"], "ms"), "kpi-latency-p95"),
                kpi("Interruption rate", _fmt(k["interruption_rate"], "pct"), "kpi-interruption-rate"),
                kpi("Containment", _fmt(k["containment_rate"], "pct"), "kpi-containment"),
                kpi("Recording coverage", _fmt(k["recording_coverage"], "pct"), "kpi-recording-coverage"),
                kpi("Estimated LLM cost", _fmt(k["estimated_cost_usd"], "usd"), "kpi-cost"),
            ],
            style={"display": "flex", "flexWrap": "wrap", "gap": "0.6rem"},
        )
        charts = []
        if d.height:

            def chart(traces, title: str, chart_id: str, bars: bool = False):
                fig = go.Figure(traces)
                fig.update_layout(
                    title=title,
                    height=300,
                    margin={"l": 40, "r": 10, "t": 40, "b": 30},
                    barmode="stack" if bars else None,
                )
                fig.update_xaxes(type="category")  # one tick per day
                return dcc.Graph(figure=fig, id=chart_id, style={"width": "49%", "display": "inline-block"})

            def per_agent(column: str, kind: str = "line", suffix: str = ""):
                out = []
                for (name,), part in d.group_by("agent", maintain_order=True):
                    x, y = [str(v) for v in part["call_date"].to_list()], part[column].to_list()
                    label = html_escape(f"{name}{suffix}")  # Plotly reads tags (<a href>) in trace names
                    out.append(
                        go.Bar(x=x, y=y, name=label)
                        if kind == "bar"
                        else go.Scatter(x=x, y=y, name=label, mode="lines+markers")
                    )
                return out

            def mix(prefix: str):  # counts per label over the period
                columns = [c for c in d.columns if c.startswith(prefix)]
                return [go.Bar(x=[c.removeprefix(prefix) for c in columns], y=[d[c].sum() for c in columns])]

            charts = [
                chart(per_agent("calls", "bar"), "Calls per day by agent", "chart-calls", bars=True),
                chart(per_agent("speech_minutes", "bar"), "Minutes of speech per day", "chart-minutes", bars=True),
                chart(
                    per_agent("turn_latency_ms_p50", suffix=" p50") + per_agent("turn_latency_ms_p95", suffix=" p95"),
                    "Turn latency (ms), interrupted turns excluded",
                    "chart-latency",
                ),
                chart(
                    per_agent("interruption_rate"),
                    "Interruption rate (barge-ins per assistant turn)",
                    "chart-interruptions",
                ),
                chart(per_agent("duration_ms_p50"), "Median session duration (ms)", "chart-duration"),
                chart(per_agent("recording_coverage"), "Recording coverage", "chart-recordings"),
                chart(mix("outcome_"), "Outcome mix", "chart-outcomes"),
                chart(mix("sentiment_"), "Sentiment mix", "chart-sentiment"),
            ]
        table = lowest_quality_table(lowest_quality(serving, agent))
        return html.Div([cards, html.Div(charts), html.H2("Lowest-quality calls"), table])

    def lowest_quality_table(low: pl.DataFrame):
        """Every value from calls is text: the session id is a link's text, never markdown or
        HTML (a crafted id rendered as markdown became a live external link)."""
        columns = (
            "agent",
            "started_at",
            "quality_score",
            "sentiment",
            "outcome",
            "interruptions",
            "turn_latency_ms_p95",
            "summary",
        )
        cell = {
            "textAlign": "left",
            "verticalAlign": "top",
            "padding": "0.3rem 0.5rem",
            "maxWidth": "520px",
            "borderBottom": "1px solid #eee",
            "fontSize": "0.85rem",
        }
        header = html.Tr([html.Th(c, style=cell) for c in ("session", *columns)])
        body = [
            html.Tr(
                [
                    html.Td(
                        dcc.Link(r["session_id"], href="/call/" + quote(r["session_id"], safe=""), refresh=True),
                        style=cell,
                    ),
                    *[html.Td(str(r[c])[:19] if c == "started_at" else _fmt(r[c]), style=cell) for c in columns],
                ]
            )
            for r in low.iter_rows(named=True)
        ]
        return html.Table(
            [html.Thead(header), html.Tbody(body)], id="lowest-quality", style={"borderCollapse": "collapse"}
        )

    def call_page(session_id: str):
        head, turns = transcript(serving, session_id)
        if head is None:
            return html.P(f"No session {session_id} in the serving copy.", id="missing-call")
        items = []
        for t in turns.iter_rows(named=True):
            marks = []
            if t["latency_ms"] is not None:
                marks.append(html.Span(f"latency {t['latency_ms']:,.0f} ms", className="latency"))
            if t["response_gap_ms"] is not None:
                marks.append(html.Span(f"gap {t['response_gap_ms']:,.0f} ms", className="gap"))
            if t["interrupted"]:
                heard = f", heard {t['words_heard']:.0f} words" if t["words_heard"] is not None else ""
                marks.append(
                    html.Span(f"barge-in{heard}", className="barge-in", style={"color": "#b00", "fontWeight": 600})
                )
            separated: list[Any] = [m for i, mark in enumerate(marks) for m in ((" · ", mark) if i else (mark,))]
            who = {"user": "Caller", "assistant": "Agent"}.get(t["role"], t["role"])
            items.append(
                html.Li(
                    [
                        html.Strong(f"{who} "),
                        html.Span(f"+{t['offset_ms'] / 1000:.1f} s " if t["offset_ms"] is not None else ""),
                        html.Span(t["text"] or ""),
                        html.Div(separated, style={"fontSize": "0.8rem", "color": "#555"}),
                    ],
                    className=f"turn turn-{t['role']}",
                    **cast(Any, {"data-position": str(t["position"])}),
                    style={"margin": "0.4rem 0"},
                )
            )
        facts = ", ".join(
            f"{k.replace('_', ' ')}: {_fmt(v)}" for k, v in head.items() if k not in ("session_id", "summary")
        )
        return html.Div(
            [
                html.A("← all calls", href="/"),
                html.H2(f"Call {session_id}", id="call-title"),
                html.P(head["summary"] or "", id="call-summary"),
                html.P(facts, id="call-facts"),
                html.Ol(items, id="transcript", style={"listStyle": "none", "paddingLeft": 0}),
            ]
        )

    @app.callback(
        Output("page", "children"), Input("url", "pathname"), Input("refresh", "n_intervals"), Input("agent", "value")
    )
    def render(pathname: str | None, _n: int | None, agent: str | None):
        # every refresh reads the serving file again: a new publish shows without a reload
        if pathname and pathname.startswith("/call/"):
            return call_page(unquote(pathname.removeprefix("/call/")))
        return overview(agent)

    @app.callback(Output("agent", "options"), Input("refresh", "n_intervals"))
    def agent_options(_n: int | None):
        return agents(serving) if serving.exists() else [{"label": "All agents", "value": ALL}]

    app.layout.children.insert(
        3,
        dcc.Dropdown(
            id="agent",
            options=[{"label": "All agents", "value": ALL}],
            value=ALL,
            clearable=False,
            style={"maxWidth": "360px"},
        ),
    )
    return app


def serve(serving: Path, host: str = "127.0.0.1", port: int = 8050, refresh_s: float = REFRESH_S) -> None:
    create_app(serving, refresh_s).run(host=host, port=port, debug=False)
