"""The review workbench: a reviewer confirms or corrects a call's enrichment and flags turns
whose transcript is wrong; queues pick the calls worth a look; the enrichment's accuracy on
reviewed calls is shown.

Saving needs a reviewer's name and credential (LAYERCODE_REVIEWERS), typed into the form and
sent with the review, never kept in a cookie: a page on another site cannot make the browser
send it, so a forged cross-site request carries no credential and is refused. The server also
refuses any POST whose Origin is not the dashboard's own (`refuse_cross_site`). A review is
appended to the review files and fsynced before the page says saved (lib/reviews.py).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from dash import Input, Output, State, dcc, html

from layercode_pipeline.lib.enrichment.analysis import OUTCOMES, SENTIMENTS
from layercode_pipeline.lib.reviews import Review, ReviewLog, ReviewRefused, build_review

from .queries import fmt, frame, has_table, session_exists, transcript

QUEUE_SIZE = 10


@dataclass
class Workbench:
    serving: Path
    log: ReviewLog
    reviewers: dict[str, str] = field(repr=False)  # name -> credential
    topics: list[str]

    def check_credential(self, name: str | None, credential: str | None) -> str:
        """The reviewer's name, or ReviewRefused (the same answer for an unknown name and a
        wrong credential: it tells nothing about which reviewers exist)."""
        if not self.reviewers:
            raise ReviewRefused("reviewing is off: set LAYERCODE_REVIEWERS for the dashboard")
        expected = self.reviewers.get((name or "").strip(), "")
        if not credential or not expected or not hmac.compare_digest(credential.encode(), expected.encode()):
            raise ReviewRefused("not saved: the reviewer's name or credential is wrong")
        return (name or "").strip()


def _history(reviews: list[Review]):
    if not reviews:
        return html.P("Not reviewed yet.", id="review-none")
    return html.Ul(
        [
            html.Li(
                f"{r.reviewed_at:%Y-%m-%d %H:%M} UTC · {r.reviewer}: {r.outcome}, {r.sentiment}, quality "
                f"{r.quality_score}"
                + (f", caller {r.caller_name}" if r.caller_name else "")
                + (f", {len(r.flagged_turns)} turn(s) flagged" if r.flagged_turns else "")
                + (f" · {r.comment}" if r.comment else ""),
                className="review-entry",
            )
            for r in reviews
        ],
        id="review-entries",
    )


def shown_from(head: dict[str, Any] | None) -> dict[str, Any]:
    """What the review form shows of the enrichment (and what a review keeps as `shown`)."""
    head = head or {}
    return {
        "provider": head.get("enrichment_provider"),
        "model": head.get("enrichment_model"),
        "prompt_version": head.get("enrichment_prompt_version"),
        "caller_name": head.get("caller_name"),
        "outcome": head.get("outcome"),
        "sentiment": head.get("sentiment"),
        "topics": list(head.get("topics") or []),
        "quality_score": head.get("quality_score"),
    }


def review_panel(workbench: Workbench, head: dict[str, Any], turns: pl.DataFrame):
    """The review form, prefilled with the enrichment's answers, and the call's reviews so far."""
    session_id = head["session_id"]
    shown = shown_from(head)
    turn_options = [
        {"label": f" #{t['position']} {(t['text'] or '')[:60]}", "value": t["position"]}
        for t in turns.iter_rows(named=True)
    ]
    label = {"display": "block", "marginTop": "0.6rem", "fontWeight": 600}
    return html.Div(
        [
            html.H3("Review"),
            dcc.Store(id="review-context", data={"session_id": session_id, "shown": shown}),
            html.Label("Reviewer", htmlFor="review-reviewer", style=label),
            dcc.Input(id="review-reviewer", type="text", autoComplete="username", debounce=False),
            html.Label("Token or password", htmlFor="review-credential", style=label),
            dcc.Input(id="review-credential", type="password", autoComplete="current-password"),
            html.Label("Caller name", htmlFor="review-caller-name", style=label),
            dcc.Input(id="review-caller-name", type="text", value=shown["caller_name"] or ""),
            html.Label("Outcome", style=label),
            dcc.RadioItems(id="review-outcome", options=list(OUTCOMES), value=shown["outcome"], inline=True),
            html.Label("Sentiment", style=label),
            dcc.RadioItems(id="review-sentiment", options=list(SENTIMENTS), value=shown["sentiment"], inline=True),
            html.Label("Topics", style=label),
            dcc.Checklist(
                id="review-topics",
                options=workbench.topics,
                value=[t for t in shown["topics"] if t in workbench.topics],
                inline=True,
            ),
            html.Label("Quality (1 poor to 5 excellent)", htmlFor="review-quality", style=label),
            dcc.Input(id="review-quality", type="number", min=1, max=5, step=1, value=shown["quality_score"]),
            html.Label("Turns whose transcript is wrong", style=label),
            dcc.Checklist(id="review-flagged-turns", options=turn_options, value=[]),
            html.Label("Comment", htmlFor="review-comment", style=label),
            dcc.Textarea(id="review-comment", value="", style={"width": "100%", "height": "4rem"}),
            html.Button("Save review", id="review-save", n_clicks=0, style={"marginTop": "0.6rem"}),
            html.P(id="review-status", role="status"),
            html.H4("Reviews of this call"),
            html.Div(_history(list(workbench.log.reviews(session_id))), id="review-history"),
        ],
        id="review-panel",
    )


def register_review_callbacks(app, workbench: Workbench) -> None:
    @app.callback(
        Output("review-status", "children"),
        Output("review-history", "children"),
        Input("review-save", "n_clicks"),
        State("review-context", "data"),
        State("review-reviewer", "value"),
        State("review-credential", "value"),
        State("review-caller-name", "value"),
        State("review-outcome", "value"),
        State("review-sentiment", "value"),
        State("review-topics", "value"),
        State("review-quality", "value"),
        State("review-flagged-turns", "value"),
        State("review-comment", "value"),
        prevent_initial_call=True,
    )
    def save(
        n_clicks, context, reviewer, credential, caller_name, outcome, sentiment, topics, quality, flagged, comment
    ):
        import dash

        context = context or {}
        session_id = str(context.get("session_id") or "")
        try:
            name = workbench.check_credential(reviewer, credential)
            review = build_review(
                {
                    "session_id": session_id,
                    "reviewer": name,
                    "caller_name": caller_name,
                    "outcome": outcome,
                    "sentiment": sentiment,
                    "topics": topics or [],
                    "quality_score": quality,
                    "comment": comment or "",
                    "flagged_turns": [{"position": int(p)} for p in flagged or []],
                    # what the page showed, read again here from the serving copy: never the
                    # client's copy, which a reviewer's browser could send as anything, any size
                    "shown": shown_from(transcript(workbench.serving, session_id)[0]) if session_id else {},
                },
                known_sessions={session_id} if session_exists(workbench.serving, session_id) else set(),
                topics=workbench.topics,
            )
        except ReviewRefused as exc:
            return html.Span(str(exc), className="review-refused", style={"color": "#b00"}), dash.no_update
        workbench.log.append(review)  # fsynced before the page says saved
        saved = f"Saved: review {review.review_id[:8]} by {review.reviewer} at {review.reviewed_at:%H:%M:%S} UTC"
        return (
            html.Span(saved, className="review-saved", style={"color": "#060"}),
            _history(list(workbench.log.reviews(session_id))),
        )


def _queue(title: str, element_id: str, rows: pl.DataFrame, describe) -> html.Div:
    items = [
        html.Li([html.A(r["session_id"], href=f"/call/{_quote(r['session_id'])}"), " ", describe(r)])
        for r in rows.iter_rows(named=True)
    ]
    return html.Div(
        [html.H3(title), html.Ol(items, id=element_id) if items else html.P("Nothing here.", id=element_id)]
    )


def _quote(session_id: str) -> str:
    from urllib.parse import quote

    return quote(session_id, safe="")


def queues_page(workbench: Workbench):
    """Calls to pick from (not yet reviewed), and the enrichment's accuracy on reviewed calls."""
    serving = workbench.serving
    reviewed = sorted({r.session_id for r in workbench.log.reviews()})
    not_reviewed = "not list_contains(?::varchar[], session_id)"
    lowest = frame(
        serving,
        f"""select session_id, quality_score, outcome from marts.fct_sessions
            where quality_score is not null and {not_reviewed}
            order by quality_score, sentiment_score nulls last, session_id limit {QUEUE_SIZE}""",
        [reviewed],
    )
    audio = (
        frame(
            serving,
            f"""select session_id, is_silent, is_clipped, length_mismatch from marts.fct_recordings
                where audio_ok = false and {not_reviewed} order by fetched_at desc limit {QUEUE_SIZE}""",
            [reviewed],
        )
        if has_table(serving, "fct_recordings")
        else pl.DataFrame({"session_id": []})
    )
    columns = set(frame(serving, "select * from marts.fct_sessions limit 0").columns)
    disagree = (
        frame(
            serving,
            f"""select session_id, enrichment_versions from marts.fct_sessions
                where enrichment_versions_disagree and {not_reviewed} order by started_at desc limit {QUEUE_SIZE}""",
            [reviewed],
        )
        if "enrichment_versions_disagree" in columns
        else pl.DataFrame({"session_id": []})
    )
    sample = frame(  # a different sample each day, the same all day
        serving,
        f"""select session_id, outcome from marts.fct_sessions where {not_reviewed}
            order by hash(session_id || current_date::varchar) limit {QUEUE_SIZE}""",
        [reviewed],
    )
    return html.Div(
        [
            html.A("← all calls", href="/"),
            html.H2("Review queues", id="queues-title"),
            html.P(f"{len(reviewed)} calls reviewed so far.", id="reviewed-count"),
            accuracy_table(workbench),
            html.Div(
                [
                    _queue(
                        "Lowest quality",
                        "queue-lowest-quality",
                        lowest,
                        lambda r: f"quality {r['quality_score']}, {r['outcome']}",
                    ),
                    _queue(
                        "Audio check failed",
                        "queue-audio",
                        audio,
                        lambda r: ", ".join(
                            k.replace("is_", "").replace("_", " ") for k in r if k != "session_id" and r[k]
                        ),
                    ),
                    _queue(
                        "Provider versions disagree",
                        "queue-disagree",
                        disagree,
                        lambda r: f"{r['enrichment_versions']} analyses",
                    ),
                    _queue("Random sample", "queue-sample", sample, lambda r: f"{r['outcome'] or ''}"),
                ],
                style={"display": "grid", "gridTemplateColumns": "repeat(2, 1fr)", "gap": "1rem"},
            ),
        ]
    )


def accuracy_table(workbench: Workbench):
    """The enrichment's agreement with each call's latest review, per provider and model (from
    marts.fct_reviews: reviews count once the pipeline's next run has published them)."""
    if not has_table(workbench.serving, "fct_reviews"):
        return html.P("No reviews published yet.", id="accuracy")
    acc = frame(
        workbench.serving,
        """
        select coalesce(enrichment_provider, '–') as provider, coalesce(enrichment_model, '–') as model,
               count(*) as reviewed_calls,
               avg(outcome_confirmed::int) as outcome, avg(sentiment_confirmed::int) as sentiment,
               avg(caller_name_confirmed::int) as caller_name, avg(abs(quality_score_correction)) as quality_off_by
        from marts.fct_reviews where is_latest group by all order by reviewed_calls desc""",
    )
    if not acc.height:
        return html.P("No reviews published yet.", id="accuracy")
    head = ["provider", "model", "reviewed calls", "outcome", "sentiment", "caller name", "quality off by"]
    return html.Div(
        [
            html.H3("Enrichment accuracy on reviewed calls"),
            html.Table(
                [html.Tr([html.Th(h) for h in head])]
                + [
                    html.Tr(
                        [
                            html.Td(r["provider"]),
                            html.Td(r["model"]),
                            html.Td(fmt(r["reviewed_calls"])),
                            html.Td(fmt(r["outcome"], "pct")),
                            html.Td(fmt(r["sentiment"], "pct")),
                            html.Td(fmt(r["caller_name"], "pct")),
                            html.Td(fmt(r["quality_off_by"])),
                        ]
                    )
                    for r in acc.iter_rows(named=True)
                ],
                id="accuracy",
            ),
        ]
    )
