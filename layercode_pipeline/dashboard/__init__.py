"""`layercode-pipeline dashboard`: a read-only dashboard over the serving copy.

Built on Dash (Plotly's dashboard framework: a Flask server and React components, no build
step, light to install, and every figure and number is plain DOM a headless browser can
check). It reads `serving/analytics.duckdb` only, never the warehouse: each page load and
each refresh opens the file read-only and closes it, so a publish (which renames a new file
over the old one) is picked up on the next refresh and the dashboard never holds a lock the
pipeline needs. Query results are polars frames.

Pages, one module each: `/` (`overview.py`: calls and minutes per day by agent; duration, turn latency p50/p95 and
interruption rate over time; outcome and sentiment mix; recording coverage; the
lowest-quality calls with their summary) and `/call/<session_id>` (`call.py`: the transcript, turn by
turn, with each reply's latency and the barge-ins marked).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

from .queries import ALL, REFRESH_S, agents


def create_app(serving: Path, refresh_s: float = REFRESH_S):
    """The Dash app over `serving` (a path to analytics.duckdb)."""
    import dash
    from dash import Input, Output, dcc, html

    from .call import call_page
    from .overview import overview_page

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
        # every refresh reads the serving file again: a new publish shows without a reload
        if pathname and pathname.startswith("/call/"):
            return call_page(serving, unquote(pathname.removeprefix("/call/")))
        return overview_page(serving, agent)

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
