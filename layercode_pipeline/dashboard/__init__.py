"""`layercode-pipeline dashboard`: a dashboard over the serving copy, and a review workbench.

Built on Dash (Plotly's dashboard framework: a Flask server and React components, no build
step, light to install, and every figure and number is plain DOM a headless browser can
check). It reads `serving/analytics.duckdb` only, never the warehouse: each page load and
each refresh opens the file read-only and closes it, so a publish (which renames a new file
over the old one) is picked up on the next refresh and the dashboard never holds a lock the
pipeline needs. Query results are polars frames.

Pages, one module each: `/` (`overview.py`: calls and minutes per day by agent; duration, turn
latency p50/p95 and interruption rate over time; outcome and sentiment mix; recording
coverage; the lowest-quality calls with their summary), `/call/<session_id>` (`call.py`: the
recording in a player that seeks, the transcript turn by turn with each reply's latency and
the barge-ins marked, the enrichment, and the review form) and `/review` (`review.py`: the
queues to pick calls from, and the enrichment's accuracy on reviewed calls).

`/recording/<session_id>` serves a kept WAV with HTTP range requests (a player seeks by
asking for a byte range), from the recordings directory only, or redirects to a short-lived
signed URL when the recordings are on object storage.
"""

from __future__ import annotations

from collections.abc import Iterable
from html import escape as html_escape
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from .queries import ALL, REFRESH_S, agents

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
# the dashboard's pages, and Dash's own routes (its scripts, layout, callbacks, assets)
PAGE_PREFIXES = ("/call/", "/review", "/recording/", "/assets/", "/_dash", "/_reload-hash", "/_favicon")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def allowed_host_names(bind_host: str, configured: Iterable[str] = ()) -> frozenset[str]:
    """The `Host` names the dashboard answers to: loopback, the address it listens on (unless a
    wildcard), and the names configured (LAYERCODE_DASHBOARD_HOSTS)."""
    names = {*LOOPBACK_HOSTS, *(h.strip().lower() for h in configured if h.strip())}
    if bind_host not in WILDCARD_HOSTS:
        names.add(bind_host.strip("[]").lower())
    return frozenset(names)


def create_app(
    serving: Path,
    refresh_s: float = REFRESH_S,
    *,
    workbench: Any = None,
    recordings: Any = None,
    allowed_hosts: Iterable[str] = LOOPBACK_HOSTS,
):
    """The Dash app over `serving` (a path to analytics.duckdb). `workbench` (review.Workbench)
    enables reviewing; `recordings` (a RecordingStore) enables the player. Requests whose `Host`
    names none of `allowed_hosts` are refused (421): a page on another site whose name was
    rebound to this address cannot read calls or recordings."""
    import dash
    import flask
    from dash import Input, Output, dcc, html

    from .call import call_page
    from .overview import overview_page
    from .queries import recording
    from .review import queues_page, register_review_callbacks

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

    @app.callback(
        Output("page", "children"), Input("url", "pathname"), Input("refresh", "n_intervals"), Input("agent", "value")
    )
    def render(pathname: str | None, _n: int | None, agent: str | None):
        # every refresh reads the serving file again: a new publish shows without a reload. A
        # call page and the queues are not redrawn by the timer: it would stop the player and
        # wipe a review being typed.
        if pathname and pathname.startswith("/call/"):
            if dash.ctx.triggered_id == "refresh":
                raise dash.exceptions.PreventUpdate
            return call_page(serving, unquote(pathname.removeprefix("/call/")), workbench)
        if pathname == "/review":
            if dash.ctx.triggered_id == "refresh":
                raise dash.exceptions.PreventUpdate
            if workbench is None:
                return html.P("The review workbench is not configured.", id="queues-title")
            return queues_page(workbench)
        return overview_page(serving, agent)

    @app.callback(Output("agent", "style"), Input("url", "pathname"))
    def agent_filter_where_it_filters(pathname: str | None):
        # the filter applies to the overview only: on a call page or the review queues it did
        # nothing, so it is not shown there
        return {"maxWidth": "360px", "display": "block" if pathname in (None, "", "/") else "none"}

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
    if workbench is not None:
        register_review_callbacks(app, workbench)
    server = app.server
    hosts = frozenset(h.lower() for h in allowed_hosts)

    @server.before_request
    def refuse_other_hosts():
        """DNS rebinding: a name the browser trusts as another site, now pointing here."""
        name = urlsplit("//" + (flask.request.host or "")).hostname or ""
        if name.lower() not in hosts:
            return flask.Response(
                f"host {name!r} is not this dashboard's (LAYERCODE_DASHBOARD_HOSTS lists the names it answers to)",
                status=421,
            )
        return None

    @server.before_request
    def not_a_page():
        """A path that is none of the dashboard's pages is a 404, not the overview."""
        path = flask.request.path
        if flask.request.method == "GET" and not (path == "/" or path.startswith(PAGE_PREFIXES)):
            body = (
                f"<!doctype html><title>Not found</title><h1>No page at {html_escape(path)}</h1>"
                '<p>The dashboard has <a href="/">the overview</a>, <code>/call/&lt;session id&gt;</code> and '
                '<a href="/review">/review</a>.</p>'
            )
            return flask.Response(body, status=404, mimetype="text/html")
        return None

    @server.before_request
    def refuse_cross_site():
        """Every POST (a Dash callback, a review) must come from the dashboard's own pages."""
        if flask.request.method in ("GET", "HEAD", "OPTIONS"):
            return None
        request = flask.request
        origin = request.headers.get("Origin")
        own = f"{urlsplit(request.host_url).scheme}://{request.host}"
        if origin is not None and origin != own:
            return flask.Response("cross-site request refused", status=403)
        if request.headers.get("Sec-Fetch-Site") in ("cross-site", "same-site"):
            return flask.Response("cross-site request refused", status=403)
        if not (request.content_type or "").startswith("application/json"):  # what an HTML form cannot send
            return flask.Response("only the dashboard's own requests are accepted", status=403)
        return None

    @server.route("/recording/<path:session_id>")
    def recording_file(session_id: str):
        kept = recording(serving, session_id) if serving.exists() else None
        if kept is None or recordings is None:
            flask.abort(404)
        url = recordings.browser_url(kept["recording_uri"])
        if url is not None:  # on object storage: a short-lived signed URL (range requests go there)
            return flask.redirect(url, code=302)
        path = Path(kept["recording_uri"]).resolve()
        if recordings.root not in path.parents or not path.is_file():  # only files of the recordings directory
            flask.abort(404)
        return flask.send_file(path, mimetype="audio/wav", conditional=True, max_age=0)

    return app


def serve(
    serving: Path,
    host: str = "127.0.0.1",
    port: int = 8050,
    refresh_s: float = REFRESH_S,
    *,
    workbench: Any = None,
    recordings: Any = None,
    hosts: Iterable[str] = (),
) -> None:
    app = create_app(
        serving, refresh_s, workbench=workbench, recordings=recordings, allowed_hosts=allowed_host_names(host, hosts)
    )
    app.run(host=host, port=port, debug=False)
