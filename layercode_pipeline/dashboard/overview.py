"""`/`: calls and minutes per day by agent; duration, turn latency p50/p95 and interruption
rate over time; outcome and sentiment mix; recording coverage; the lowest-quality calls."""

from __future__ import annotations

from html import escape as html_escape
from pathlib import Path
from urllib.parse import quote

import plotly.graph_objects as go  # graph objects need no numpy (Plotly Express would)
import polars as pl
from dash import dcc, html

from .queries import agent_ids, daily, fmt, kpis, local_time, lowest_quality

# Plotly's default qualitative palette
AGENT_COLOURS = ("#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880")


def kpi(label: str, value: str, kpi_id: str):
    return html.Div(
        [
            html.Div(label, style={"color": "#666", "fontSize": "0.85rem"}),
            html.Div(value, id=kpi_id, style={"fontSize": "1.6rem", "fontWeight": 600}),
        ],
        style={"padding": "0.6rem 1rem", "border": "1px solid #ddd", "borderRadius": "6px"},
    )


def agent_colours(serving: Path) -> dict[str, str]:
    """Each agent's colour: by its place among every agent's id, sorted."""
    return {a: AGENT_COLOURS[i % len(AGENT_COLOURS)] for i, a in enumerate(agent_ids(serving))}


def overview_page(serving: Path, agent: str | None):
    """The overview: headline numbers, charts per day, and the lowest-quality calls."""
    if not serving.exists():
        return html.P(f"No serving copy yet at {serving}: run the pipeline (layercode-pipeline demo).", id="empty")
    k, d = kpis(serving, agent), daily(serving, agent)
    cards = html.Div(
        [
            kpi("Calls", fmt(k["calls"]), "kpi-calls"),
            kpi("Sessions", fmt(k["sessions"]), "kpi-sessions"),
            kpi("Minutes of speech", fmt(k["speech_minutes"]), "kpi-minutes"),
            kpi("Turn latency p50", fmt(k["turn_latency_ms_p50"], "ms"), "kpi-latency-p50"),
            kpi("Turn latency p95", fmt(k["turn_latency_ms_p95"], "ms"), "kpi-latency-p95"),
            kpi("Interruption rate", fmt(k["interruption_rate"], "pct"), "kpi-interruption-rate"),
            kpi("Containment", fmt(k["containment_rate"], "pct"), "kpi-containment"),
            kpi("Recording coverage", fmt(k["recording_coverage"], "pct"), "kpi-recording-coverage"),
            kpi(
                "Estimated LLM cost",
                fmt(k["estimated_cost_usd"], "usd") if k["llm_analysed"] else "offline: no LLM cost",
                "kpi-cost",
            ),
        ],
        style={"display": "flex", "flexWrap": "wrap", "gap": "0.6rem"},
    )
    charts = []
    if d.height:

        def chart(traces, title: str, chart_id: str, *, bars: bool = False, y: str = ""):
            """A chart over calendar days (a date axis: gaps are days without calls); `y` is the
            value axis's unit: "pct" for rates (shares of 1 shown as percent)."""
            fig = go.Figure(traces)
            fig.update_layout(
                title=title,
                height=300,
                margin={"l": 50, "r": 10, "t": 40, "b": 30},
                barmode="stack" if bars else None,
                legend={"orientation": "h", "y": -0.15},
                hovermode="x unified",
            )
            fig.update_xaxes(type="date", tickformat="%b %d")
            if y == "pct":
                fig.update_yaxes(tickformat=".0%", rangemode="tozero")
            else:
                fig.update_yaxes(rangemode="tozero", ticksuffix=y)
            return dcc.Graph(figure=fig, id=chart_id, style={"width": "49%", "display": "inline-block"})

        # one colour per agent in every chart (its p50 and p95 lines too), the same whatever the
        # filter: numbered over every agent of the serving copy, not over those shown
        colour = agent_colours(serving)

        def per_agent(column: str, kind: str = "line", suffix: str = "", dash: str | None = None):
            """One series per agent id, named by the agent's label."""
            out = []
            for (agent_id, label), part in d.group_by("agent_id", "agent", maintain_order=True):
                x, y = [v.isoformat() for v in part["call_date"].to_list()], part[column].to_list()
                name = html_escape(f"{label}{suffix}")  # Plotly reads tags (<a href>) in trace names
                c = colour[agent_id]
                out.append(
                    go.Bar(x=x, y=y, name=name, marker={"color": c})
                    if kind == "bar"
                    else go.Scatter(
                        x=x, y=y, name=name, mode="lines+markers", line={"dash": dash, "color": c}, marker={"size": 4}
                    )
                )
            return out

        def mix(prefix: str):  # counts per label over the period
            columns = [c for c in d.columns if c.startswith(prefix)]
            return [go.Bar(x=[c.removeprefix(prefix) for c in columns], y=[d[c].sum() for c in columns])]

        def mix_chart(prefix: str, title: str, chart_id: str):
            fig = go.Figure(mix(prefix))
            fig.update_layout(title=title, height=300, margin={"l": 50, "r": 10, "t": 40, "b": 30})
            return dcc.Graph(figure=fig, id=chart_id, style={"width": "49%", "display": "inline-block"})

        charts = [
            chart(per_agent("calls", "bar"), "Calls per day by agent", "chart-calls", bars=True),
            chart(
                per_agent("speech_minutes", "bar"), "Minutes of speech per day", "chart-minutes", bars=True, y=" min"
            ),
            chart(
                per_agent("latency_ms_p50", suffix=" p50") + per_agent("latency_ms_p95", suffix=" p95", dash="dot"),
                "Reply latency per day (session.end), p50 and p95",
                "chart-latency",
                y=" ms",
            ),
            chart(
                per_agent("interruption_rate"),
                "Interruption rate (agent turns the caller spoke over)",
                "chart-interruptions",
                y="pct",
            ),
            chart(per_agent("duration_s_p50"), "Median call duration", "chart-duration", y=" s"),
            chart(per_agent("recording_coverage"), "Recording coverage", "chart-recordings", y="pct"),
            mix_chart("outcome_", "Outcome mix", "chart-outcomes"),
            mix_chart("sentiment_", "Sentiment mix", "chart-sentiment"),
        ]
    table = lowest_quality_table(lowest_quality(serving, agent))
    return html.Div([cards, html.Div(charts), html.H2("Lowest-quality calls"), table])


def lowest_quality_table(low: pl.DataFrame):
    """Every value from calls is text: the session id is a link's text, never markdown or
    HTML (a crafted id rendered as markdown became a live external link)."""
    # the column, and its heading: every session has a reply latency (session.end's); the turn
    # latencies come with a REST record only, and were "-" for most calls
    labels = {
        "agent": "Agent",
        "started_at": "Started",
        "quality_score": "Quality (1-5)",
        "sentiment": "Sentiment",
        "outcome": "Outcome",
        "interruptions": "Barge-ins",
        "latency_ms": "Reply latency",
        "summary": "Summary",
    }
    columns = tuple(labels)
    cell = {
        "textAlign": "left",
        "verticalAlign": "top",
        "padding": "0.3rem 0.5rem",
        "maxWidth": "520px",
        "borderBottom": "1px solid #eee",
        "fontSize": "0.85rem",
    }
    header = html.Tr([html.Th(c, style=cell) for c in ("Session", *labels.values())])
    body = [
        html.Tr(
            [
                html.Td(
                    dcc.Link(r["session_id"], href="/call/" + quote(r["session_id"], safe=""), refresh=True),
                    style=cell,
                ),
                *[
                    html.Td(
                        local_time(r[c]) if c == "started_at" else fmt(r[c], "ms" if c == "latency_ms" else ""),
                        style=cell,
                    )
                    for c in columns
                ],
            ]
        )
        for r in low.iter_rows(named=True)
    ]
    return html.Table([html.Thead(header), html.Tbody(body)], id="lowest-quality", style={"borderCollapse": "collapse"})
