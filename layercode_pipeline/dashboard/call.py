"""`/call/<session_id>`: the transcript, turn by turn, with each reply's latency and the
barge-ins marked. Every value from calls is rendered as text."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from dash import html

from .queries import fmt, transcript


def call_page(serving: Path, session_id: str):
    """One call's transcript with its facts, or a note that the serving copy has no such call."""
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
    facts = ", ".join(f"{k.replace('_', ' ')}: {fmt(v)}" for k, v in head.items() if k not in ("session_id", "summary"))
    return html.Div(
        [
            html.A("← all calls", href="/"),
            html.H2(f"Call {session_id}", id="call-title"),
            html.P(head["summary"] or "", id="call-summary"),
            html.P(facts, id="call-facts"),
            html.Ol(items, id="transcript", style={"listStyle": "none", "paddingLeft": 0}),
        ]
    )
