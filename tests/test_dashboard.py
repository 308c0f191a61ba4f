"""`layercode-pipeline dashboard` in a real headless browser (Debian's Chromium, driven by
Playwright): the page loads over the serving copy, its numbers are the serving file's, the
transcript view opens with latency and barge-ins marked, and a new publish shows without a
reload. Needs the `chromium` package (`.ci/run` installs it); elsewhere the test is skipped
with what to install, unless LAYERCODE_REQUIRE_CHROMIUM=1 (CI), where it fails instead."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import dagster as dg
import duckdb
import httpx
import pytest

from layercode_pipeline.defs.dbt.assets import dbt_resource, layercode_dbt_models
from layercode_pipeline.defs.ingest.assets import raw_layercode_events
from layercode_pipeline.defs.serving.assets import analytics_serving
from layercode_pipeline.simulator.server import free_port

from .test_voice_metrics import DAY, build_voice_warehouse, envelope, epoch, ts


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        message = "Chromium not found: install Debian's package with `apt-get install -y chromium` (.ci/run does)"
        if os.environ.get("LAYERCODE_REQUIRE_CHROMIUM") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def publish(storage) -> None:
    assert dg.materialize([analytics_serving], resources={"storage": storage}).success


def expected(serving, sql: str):
    con = duckdb.connect(str(serving), read_only=True)
    try:
        return con.execute(sql).fetchone()
    finally:
        con.close()


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    """One dashboard server over one serving copy for the module (the last test publishes
    more data into it)."""
    browser_path = chromium()
    storage = build_voice_warehouse(tmp_path_factory.mktemp("dashboard") / "data")
    publish(storage)
    serving = storage.paths.serving / "analytics.duckdb"
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "layercode_pipeline.cli",
            "dashboard",
            "--serving",
            str(serving),
            "--port",
            str(port),
            "--refresh-s",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline, "the dashboard did not start"
        time.sleep(0.2)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        try:
            yield {"page": page, "url": url, "serving": serving, "storage": storage, "playwright": p}
        finally:
            browser.close()
            proc.terminate()
            try:  # (a loaded machine: the other test worker may be building a warehouse)
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def test_the_dashboard_shows_the_serving_files_numbers_and_opens_a_transcript(dashboard):
    page, serving = dashboard["page"], dashboard["serving"]
    page.goto(dashboard["url"])
    page.wait_for_selector("#kpi-calls", timeout=30_000)
    calls, sessions, minutes, irate, containment = expected(
        serving,
        """
        select sum(calls), sum(sessions), sum(speech_minutes), sum(interrupted_turns) / sum(assistant_turns_observed),
               sum(outcome_resolved) / sum(sessions_analysed) from marts.agg_daily_call_metrics""",
    )
    p50, p95 = expected(
        serving,
        "select quantile_cont(latency_ms, 0.5), quantile_cont(latency_ms, 0.95) "
        "from marts.fct_turns where role = 'assistant' and interrupted is not true",
    )
    assert (calls, sessions) == (3, 3)  # the three hand-made calls
    assert page.inner_text("#kpi-calls") == "3" and page.inner_text("#kpi-sessions") == "3"
    assert page.inner_text("#kpi-minutes") == f"{minutes:,.1f}"
    assert page.inner_text("#kpi-latency-p50") == f"{p50:,.0f} ms" == "650 ms"
    assert page.inner_text("#kpi-latency-p95") == f"{p95:,.0f} ms"
    # 1 of A's and B's 6 assistant turns; C is known only through REST: its barge-ins are unknown
    assert page.inner_text("#kpi-interruption-rate") == f"{irate * 100:.1f} %" == "16.7 %"
    assert page.inner_text("#kpi-containment") == f"{containment * 100:.1f} %"
    for chart in ("calls", "minutes", "latency", "interruptions", "duration", "recordings", "outcomes", "sentiment"):
        page.wait_for_selector(f"#chart-{chart} .main-svg", timeout=30_000)
    # the lowest-quality table links each call to its transcript
    page.wait_for_selector("#lowest-quality a", timeout=30_000)
    links = page.locator("#lowest-quality a")
    assert links.count() == 3
    page.locator("#lowest-quality a", has_text="sess_a").click()
    page.wait_for_selector("#transcript li", timeout=30_000)
    assert page.inner_text("#call-title") == "Call sess_a"
    turns = page.locator("#transcript li")
    assert turns.count() == 7
    assert [page.locator(f"#transcript li[data-position='{p}'] .latency").inner_text() for p in (3, 5, 7)] == [
        "latency 800 ms",
        "latency 650 ms",
        "latency 400 ms",
    ]
    barge_ins = page.locator(".barge-in")
    assert barge_ins.count() == 1
    assert "barge-in, heard 3 words" in page.locator("#transcript li[data-position='3']").inner_text()
    page.screenshot(path=str(serving.parent / "call.png"))


def land_short_call(storage, session_id: str, agent_id: str, start: float, *, segment: int) -> None:
    """A three-second call's session.end, landed in a segment of its own (as the listener lands it)."""
    body = {
        "type": "session.end",
        "session_id": session_id,
        "agent_id": agent_id,
        "conversation_id": f"conv_{session_id}",
        "started_at": ts(start),
        "ended_at": ts(start + 3),
        "duration": 3000,
        "transcript": [{"role": "assistant", "text": "Hi", "timestamp": epoch(start)}],
    }
    part = storage.paths.landing / f"dt={DAY}" / "hour=10"
    (part / f"wtest-{segment:06d}.jsonl").write_bytes(envelope(body, start + 3, agent_id))


def test_a_new_publish_shows_without_a_reload(dashboard):
    page, storage = dashboard["page"], dashboard["storage"]
    page.goto(dashboard["url"])
    page.wait_for_selector("#kpi-calls", timeout=30_000)
    assert page.inner_text("#kpi-calls") == "3"
    # a fourth call lands, the pipeline ingests, builds and publishes it
    land_short_call(storage, "sess_d", "ag_b", 300, segment=2)
    assert dg.materialize(
        [raw_layercode_events, layercode_dbt_models, analytics_serving],
        resources={"storage": storage, "dbt": dbt_resource()},
    ).success
    page.wait_for_function("document.querySelector('#kpi-calls').innerText === '4'", timeout=30_000)


def test_values_from_calls_are_rendered_as_text(dashboard):
    """A session id and an agent name come from calls: as markdown or HTML, a crafted one became a
    live external link. Each is shown as the text it is."""
    from layercode_pipeline.lib.agents import store_agents

    page, storage = dashboard["page"], dashboard["storage"]
    crafted_id = "x](https://evil.example/phish)[y"
    crafted_name = "<a href='https://evil.example/'>Support</a>"
    land_short_call(storage, crafted_id, "ag_evil", 400, segment=3)
    from layercode_pipeline.lib.enrichment.store import write_enrichments

    from .test_voice_metrics import enrichment

    with storage.connect() as con:
        store_agents(
            con,
            [
                {"id": "ag_a", "name": "Support Bot"},
                {"id": "ag_b", "name": "Sales Bot"},
                {"id": "ag_evil", "name": crafted_name},
            ],
        )
        write_enrichments(con, [enrichment(crafted_id, "ag_evil", "unresolved", 0.0)])
    assert dg.materialize(
        [raw_layercode_events, layercode_dbt_models, analytics_serving],
        resources={"storage": storage, "dbt": dbt_resource()},
    ).success
    page.goto(dashboard["url"])
    page.wait_for_function(
        f"document.querySelector('#lowest-quality') && "
        f"document.querySelector('#lowest-quality').innerText.includes({json.dumps(crafted_id)})",
        timeout=30_000,
    )
    page.wait_for_selector("#chart-calls .legend", timeout=30_000)
    assert page.locator("a[href*='://evil.example']").count() == 0  # the own link's href is %-quoted
    assert crafted_name in page.locator("#chart-calls").inner_text()
    assert crafted_name in page.locator("#lowest-quality").inner_text()
    page.locator("#lowest-quality a", has_text=crafted_id).click()
    page.wait_for_selector("#call-title", timeout=30_000)
    assert page.inner_text("#call-title") == f"Call {crafted_id}"


def test_a_page_on_another_site_cannot_read_the_dashboard_through_dns_rebinding(dashboard):
    """A site whose name the attacker rebinds to this machine's loopback address: the browser
    sends that name as `Host`, and the dashboard answers it nothing (421), neither the page,
    nor Dash's data, nor a recording. Chromium resolves the name to 127.0.0.1 itself
    (--host-resolver-rules), as a rebound DNS answer would."""
    port = dashboard["url"].rsplit(":", 1)[1]
    browser = dashboard["playwright"].chromium.launch(
        executable_path=chromium(),
        args=["--no-sandbox", "--host-resolver-rules=MAP rebound.attacker.test 127.0.0.1"],
    )
    try:
        page = browser.new_page()
        answer = page.goto(f"http://rebound.attacker.test:{port}/")
        assert answer is not None and answer.status == 421
        assert "not this dashboard's" in page.content()
        for path in ("/_dash-layout", "/_dash-dependencies", "/recording/anything"):
            status = page.evaluate(f"fetch('{path}').then(r => r.status)")
            assert status == 421, path
        # the dashboard's own name still works in the same browser
        answer = page.goto(dashboard["url"] + "/")
        assert answer is not None and answer.status == 200
    finally:
        browser.close()


def test_an_unknown_path_is_a_404_and_offline_analyses_cost_nothing(dashboard):
    answer = httpx.get(dashboard["url"] + "/nope", timeout=10)
    assert answer.status_code == 404 and "No page at /nope" in answer.text
    page = dashboard["page"]
    page.goto(dashboard["url"])
    page.wait_for_selector("#kpi-cost", timeout=30_000)
    # every call here was analysed by the offline rules: no LLM was paid for
    assert page.inner_text("#kpi-cost") == "offline: no LLM cost"


def test_an_agent_keeps_its_colour_whatever_the_filter_and_the_table_says_what_it_shows(dashboard):
    """Filtering to one agent leaves its colour as it was among all agents; the lowest-quality
    table has readable headings and the reply latency every call has."""
    from layercode_pipeline.dashboard.overview import overview_page
    from layercode_pipeline.dashboard.queries import ALL, agent_ids

    serving = dashboard["serving"]

    def colours(agent: str) -> dict[str, str]:
        page = overview_page(serving, agent)
        graph = next(g for g in page.children[1].children if getattr(g, "id", None) == "chart-calls")
        return {trace.name: trace.marker.color for trace in graph.figure.data}

    every = colours(ALL)
    ids = agent_ids(serving)
    assert len(ids) >= 2 and len(set(every.values())) == len(every)
    last = ids[-1]  # the agent whose place would change most when shown alone
    alone = colours(last)
    assert len(alone) == 1 and set(alone.items()) <= set(every.items())
    page = dashboard["page"]
    page.goto(dashboard["url"])
    page.wait_for_selector("#lowest-quality a", timeout=30_000)
    headings = page.locator("#lowest-quality th").all_inner_texts()
    assert headings[:3] == ["Session", "Agent", "Started"] and "Reply latency" in headings
    assert not any("_" in h for h in headings)


def test_the_agent_filter_is_shown_only_where_it_filters(dashboard):
    page = dashboard["page"]
    page.goto(dashboard["url"])
    page.wait_for_selector("#kpi-calls", timeout=30_000)
    assert page.locator("#agent").is_visible()
    page.goto(dashboard["url"] + "/review")
    page.wait_for_selector("#queues-title", timeout=30_000)
    page.wait_for_selector("#agent", state="hidden", timeout=10_000)
