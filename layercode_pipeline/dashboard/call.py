"""`/call/<session_id>`: the call's recording in a player that seeks, the transcript turn by
turn with times (a click on a turn moves the playhead there: assets/workbench.js), latencies
and barge-ins marked, the enrichment beside it, and the review form (review.py). Every value
from calls is rendered as text."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

from dash import html

from .queries import fmt, local_time, recording, transcript
from .review import review_panel

# labelled fields: the labels in one column, the values beside them
FIELDS_STYLE = {"display": "grid", "gridTemplateColumns": "max-content auto", "columnGap": "1rem", "rowGap": "0.2rem"}


def duration(ms: float | None) -> str:
    """A call's length as people say it: seconds under two minutes, else minutes and seconds."""
    if ms is None:
        return "–"
    seconds = round(ms / 1000)
    return f"{seconds} s" if seconds < 120 else f"{seconds // 60} min {seconds % 60:02d} s"


def _turn(t: dict[str, Any]):
    marks = []
    if t["latency_ms"] is not None:
        marks.append(html.Span(f"latency {t['latency_ms']:,.0f} ms", className="latency"))
    if t["response_gap_ms"] is not None:
        marks.append(html.Span(f"gap {t['response_gap_ms']:,.0f} ms", className="gap"))
    if t["interrupted"]:
        heard = f", heard {t['words_heard']:.0f} words" if t["words_heard"] is not None else ""
        marks.append(html.Span(f"barge-in{heard}", className="barge-in", style={"color": "#b00", "fontWeight": 600}))
    separated: list[Any] = [m for i, mark in enumerate(marks) for m in ((" · ", mark) if i else (mark,))]
    who = {"user": "Caller", "assistant": "Agent"}.get(t["role"], t["role"])
    attributes = {"data-position": str(t["position"])}
    if t["offset_ms"] is not None:  # a click seeks the recording here (assets/workbench.js)
        attributes["data-offset-ms"] = str(int(t["offset_ms"]))
    return html.Li(
        [
            html.Strong(f"{who} "),
            html.Span(f"+{t['offset_ms'] / 1000:.1f} s " if t["offset_ms"] is not None else "", className="turn-time"),
            html.Span(t["text"] or ""),
            html.Div(separated, style={"fontSize": "0.8rem", "color": "#555"}),
        ],
        className=f"turn turn-{t['role']}",
        title="Play from here" if t["offset_ms"] is not None else None,
        **cast(Any, attributes),
        style={"margin": "0.4rem 0", "cursor": "pointer" if t["offset_ms"] is not None else "default"},
    )


def _player(serving: Path, session_id: str):
    rec = recording(serving, session_id)
    if rec is None:
        return html.P("No recording kept for this call.", id="no-recording")
    checks = [
        f"length {fmt(rec['duration_s'])} s (Layercode said {fmt(rec['reported_duration_s'])} s)",
        f"silence {fmt(rec['silence_share'], 'pct')}, longest {fmt(rec['longest_silence_s'])} s",
        f"clipped {fmt(rec['clipped_share'], 'pct')}",
        f"loudness {fmt(rec['loudness_dbfs'])} dBFS",
    ]
    problems = [name for name in ("is_silent", "is_clipped", "length_mismatch") if rec[name]]
    return html.Div(
        [
            # the dashboard serves the file with range requests (or redirects to a signed URL)
            html.Audio(
                id="call-audio", src=f"/recording/{quote(session_id, safe='')}", controls=True, preload="metadata"
            ),
            html.P(
                " · ".join(checks)
                + (
                    f" · check: {', '.join(p.replace('is_', '').replace('_', ' ') for p in problems)}"
                    if problems
                    else ""
                ),
                id="audio-checks",
                style={"fontSize": "0.85rem", "color": "#b00" if problems else "#555"},
            ),
        ]
    )


def call_page(serving: Path, session_id: str, workbench: Any = None):
    """One call's player, transcript and enrichment (and the review form when the workbench is
    configured), or a note that the serving copy has no such call."""
    head, turns = transcript(serving, session_id)
    if head is None:
        return html.P(f"No session {session_id} in the serving copy.", id="missing-call")
    items = [_turn(t) for t in turns.iter_rows(named=True)]
    shown = (
        "caller_name",
        "outcome",
        "sentiment",
        "topics",
        "quality_score",
        "enrichment_provider",
        "enrichment_model",
    )
    enrichment = html.Dl(
        [
            part
            for k in shown
            for part in (
                html.Dt(k.replace("_", " ").capitalize()),
                html.Dd(", ".join(head[k]) if isinstance(head[k], list) else fmt(head[k]), id=f"enrichment-{k}"),
            )
        ],
        id="call-enrichment",
        style=FIELDS_STYLE,
    )
    facts = html.Dl(
        [
            part
            for label, value, key in (
                ("Agent", fmt(head["agent"]), "agent"),
                ("Started", local_time(head["started_at"]), "started"),
                ("Duration", duration(head["duration_ms"]), "duration"),
                ("Reply latency (session.end)", fmt(head["latency_ms"], "ms"), "latency"),
                (
                    "Turn latency p50 / p95",
                    f"{fmt(head['turn_latency_ms_p50'], 'ms')} / {fmt(head['turn_latency_ms_p95'], 'ms')}",
                    "turn-latency",
                ),  # fmt: skip
                ("Barge-ins", fmt(head["interruptions"]), "interruptions"),
                ("Caller's share of the talking", fmt(head["caller_talk_share"], "pct"), "talk-share"),
                ("Prompt version", fmt(head["enrichment_prompt_version"]), "prompt-version"),
            )
            for part in (html.Dt(label), html.Dd(value, id=f"call-{key}"))
        ],
        id="call-facts",
        style=FIELDS_STYLE,
    )
    left = html.Div(
        [
            _player(serving, session_id),
            html.Ol(items, id="transcript", style={"listStyle": "none", "paddingLeft": 0}),
        ],
        style={"flex": "3", "minWidth": "0"},
    )
    right = html.Div(
        [html.H3("Enrichment"), enrichment, *([review_panel(workbench, head, turns)] if workbench else [])],
        style={"flex": "2", "minWidth": "0"},
    )
    return html.Div(
        [
            html.A("← all calls", href="/"),
            " · ",
            html.A("review queues", href="/review"),
            html.H2(f"Call {session_id}", id="call-title"),
            html.P(head["summary"] or "", id="call-summary"),
            facts,
            html.Div([left, right], style={"display": "flex", "gap": "2rem", "alignItems": "flex-start"}),
        ]
    )
