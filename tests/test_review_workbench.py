"""The review workbench in a real headless browser (Debian's Chromium, driven by Playwright)
over a demo's data: the call's recording loads and seeks (HTTP range requests), a click on a
turn moves the playhead, a review is saved, survives a dashboard restart, reaches
marts.fct_reviews after the next run, and `evaluate --labelled reviews` counts it; a review
without the reviewer's credential, and a cross-site request, are refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import httpx
import pytest

from layercode_pipeline.demo import run_demo
from layercode_pipeline.lib.reviews import ReviewLog
from layercode_pipeline.simulator.server import free_port

from .test_dashboard import chromium

REVIEWERS = {"ana": "ana-secret-token", "ben": "ben-secret-token"}


class Dashboard:
    def __init__(self, data: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "LAYERCODE_DATA_DIR": str(data), "LAYERCODE_REVIEWERS": json.dumps(REVIEWERS)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "layercode_pipeline.cli", "dashboard", "--port", str(self.port), "--refresh-s", "1"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.url, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, self.proc.stdout.read().decode()
            assert time.monotonic() < deadline, "the dashboard did not start"
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        try:  # (a loaded machine: the other test worker may be building a warehouse)
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def served(data: Path, sql: str, params=None):
    con = duckdb.connect(str(data / "serving" / "analytics.duckdb"), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


@pytest.fixture(scope="module")
def workbench(tmp_path_factory):
    browser_path = chromium()
    data = tmp_path_factory.mktemp("workbench") / "data"
    run_demo(data, 16, seed=13, processing_delay_s=0.0, receiver_port=free_port())
    # a call with a kept, audible recording and a few turns to click
    (session_id, uri, duration), *_ = served(
        data,
        """select r.session_id, r.recording_uri, r.duration_s from marts.fct_recordings r
           where r.download_status = 'downloaded' and not r.is_silent
             and (select count(*) from marts.fct_turns t where t.session_id = r.session_id) >= 4
           order by r.session_id""",
    )
    dashboard = Dashboard(data)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=browser_path, args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"]
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        state = {"page": page, "data": data, "dashboard": dashboard, "session_id": session_id}
        state |= {"uri": uri, "duration": duration}
        try:
            yield state
        finally:
            browser.close()
            state["dashboard"].stop()


def test_the_recording_loads_seeks_and_a_click_on_a_turn_moves_the_playhead(workbench):
    page, dashboard, session_id = workbench["page"], workbench["dashboard"], workbench["session_id"]
    page.goto(f"{dashboard.url}/call/{session_id}")
    page.wait_for_selector("#call-audio", timeout=30_000)
    page.wait_for_function("document.querySelector('#call-audio').readyState >= 1", timeout=30_000)
    duration = page.evaluate("document.querySelector('#call-audio').duration")
    assert duration == pytest.approx(workbench["duration"], abs=0.1)
    # the player asks for byte ranges: the dashboard answers 206 with exactly those bytes
    wav = Path(workbench["uri"]).read_bytes()
    r = httpx.get(f"{dashboard.url}/recording/{session_id}", headers={"Range": "bytes=1000-1999"})
    assert r.status_code == 206 and r.content == wav[1000:2000]
    assert httpx.get(f"{dashboard.url}/recording/sess_no_such_call").status_code == 404
    turns = page.locator("#transcript li[data-offset-ms]")
    assert turns.count() >= 4
    third = turns.nth(2)
    offset_s = int(third.get_attribute("data-offset-ms")) / 1000
    assert offset_s > 1
    third.click()
    page.wait_for_function(
        f"Math.abs(document.querySelector('#call-audio').currentTime - {offset_s}) < 1.0", timeout=10_000
    )
    page.locator("#call-audio").evaluate("a => a.pause()")
    # the audio checks' figures are shown beside the player
    assert "silence" in page.inner_text("#audio-checks")


def test_the_overview_draws_the_month_as_lines_with_percent_axes_for_rates(workbench):
    """The demo's calls span the last 30 days: each chart over time has a date axis and one line
    per agent id (named by the agent), rates on percent axes, durations in seconds."""
    page, dashboard = workbench["page"], workbench["dashboard"]
    page.goto(dashboard.url)
    for chart in ("latency", "interruptions", "duration", "recordings"):
        page.wait_for_selector(f"#chart-{chart} .js-plotly-plot .main-svg", timeout=30_000)
    figure = "document.querySelector('#chart-{}').querySelector('.js-plotly-plot')"
    first, last = served(workbench["data"], "select min(call_date), max(call_date) from marts.agg_daily_call_metrics")[
        0
    ]
    assert (last - first).days >= 20  # a month of calls, not one afternoon
    agents = {name for (name,) in served(workbench["data"], "select agent_name from marts.dim_agents")}
    for chart, unit in (("interruptions", "pct"), ("recordings", "pct"), ("duration", " s"), ("latency", " ms")):
        layout = page.evaluate(f"{figure.format(chart)}.layout")
        data = page.evaluate(f"{figure.format(chart)}.data")
        assert layout["xaxis"]["type"] == "date"
        if unit == "pct":
            assert layout["yaxis"]["tickformat"] == ".0%"  # shares of 1 drawn as percent
        else:
            assert layout["yaxis"]["ticksuffix"] == unit
        assert all("lines" in trace["mode"] for trace in data)
        assert {trace["name"].removesuffix(" p50").removesuffix(" p95") for trace in data} <= agents
        dates = sorted(x for trace in data for x in trace["x"])
        assert dates[0] == first.isoformat() and dates[-1] == last.isoformat()
    # the tick labels are percentages
    ticks = page.eval_on_selector_all("#chart-interruptions .ytick text", "els => els.map(e => e.textContent)")
    assert ticks and all(t.endswith("%") for t in ticks), ticks
    # times are shown in the reader's zone (the browser rewrites the page's UTC)
    page.wait_for_selector("#lowest-quality time.local-time[data-local]", timeout=30_000)


def fill_review(page, reviewer: str | None, credential: str | None) -> None:
    if reviewer is not None:
        page.fill("#review-reviewer", reviewer)
    if credential is not None:
        page.fill("#review-credential", credential)
    page.locator("#review-outcome label", has_text="escalated").click()
    page.locator("#review-sentiment label", has_text="negative").click()
    page.fill("#review-quality", "2")
    page.fill("#review-caller-name", "Dana Smith")
    page.locator("#review-flagged-turns input").nth(1).check()
    page.fill("#review-comment", "<b>turn 2</b> misheard")


def test_a_review_needs_a_credential_is_saved_survives_a_restart_and_reaches_the_marts(workbench):
    page, data, session_id = workbench["page"], workbench["data"], workbench["session_id"]
    log = ReviewLog(data / "reviews")
    url = f"{workbench['dashboard'].url}/call/{session_id}"
    page.goto(url)
    page.wait_for_selector("#review-save", timeout=30_000)
    # without a credential, and with a wrong one: refused, nothing written
    fill_review(page, "ana", None)
    page.click("#review-save")
    page.wait_for_selector(".review-refused", timeout=10_000)
    assert "credential is wrong" in page.inner_text("#review-status")
    page.fill("#review-credential", REVIEWERS["ben"])  # another reviewer's token
    page.click("#review-save")
    page.wait_for_function(
        "document.querySelector('#review-status').innerText.includes('credential is wrong')", timeout=10_000
    )
    assert list(log.reviews()) == []
    # with ana's own: saved (fsynced) and listed
    page.fill("#review-credential", REVIEWERS["ana"])
    page.click("#review-save")
    page.wait_for_selector(".review-saved", timeout=10_000)
    [review] = list(log.reviews())
    assert (review.session_id, review.reviewer, review.outcome, review.sentiment) == (
        session_id,
        "ana",
        "escalated",
        "negative",
    )
    assert (review.quality_score, review.caller_name, [t.position for t in review.flagged_turns]) == (
        2,
        "Dana Smith",
        [2],
    )
    assert review.shown["provider"]  # what the reviewer was shown is kept with it
    # a restart: the review is still there, the comment shown as text
    workbench["dashboard"].stop()
    workbench["dashboard"] = Dashboard(data)
    page.goto(f"{workbench['dashboard'].url}/call/{session_id}")
    page.wait_for_selector("#review-entries", timeout=30_000)
    assert "<b>turn 2</b> misheard" in page.inner_text("#review-entries")
    assert page.locator("#review-entries b").count() == 0
    # the next run ingests it into raw.reviews and publishes marts.fct_reviews
    # (in a process of its own: Playwright's sync API holds this thread's event loop)
    subprocess.run(
        [
            sys.executable,
            "-c",
            f"from layercode_pipeline.demo import materialize_all as m; m({str(data)!r}, api_url=None, api_key=None)",
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [row] = served(
        data,
        "select session_id, reviewer, outcome, sentiment, quality_score, caller_name, flagged_turn_count, is_latest, "
        "outcome_confirmed, enrichment_provider from marts.fct_reviews",
    )
    assert row[:8] == (session_id, "ana", "escalated", "negative", 2, "Dana Smith", 1, True)
    assert row[8] == (review.shown["outcome"] == "escalated") and row[9] == review.shown["provider"]
    # evaluate measures a provider on the reviewed call
    r = subprocess.run(
        [sys.executable, "-m", "layercode_pipeline.cli", "evaluate", "--labelled", "reviews", "--provider", "offline"],
        env={**os.environ, "LAYERCODE_DATA_DIR": str(data)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr + r.stdout
    assert "Accuracy on 1 labelled calls" in r.stdout
    # the queues page shows the enrichment's accuracy on the reviewed call
    page.goto(f"{workbench['dashboard'].url}/review")
    page.wait_for_selector("#accuracy", timeout=30_000)
    assert page.inner_text("#reviewed-count") == "1 calls reviewed so far."
    assert "offline" in page.inner_text("#accuracy")
    for queue in ("#queue-lowest-quality", "#queue-audio", "#queue-disagree", "#queue-sample"):
        page.wait_for_selector(queue, timeout=10_000)
    assert session_id not in page.inner_text("#queue-sample")  # reviewed calls leave the queues


def test_cross_site_requests_are_refused(workbench):
    url = workbench["dashboard"].url
    update = f"{url}/_dash-update-component"
    forged = httpx.post(update, json={"output": "x"}, headers={"Origin": "https://evil.example"})
    assert forged.status_code == 403
    as_form = httpx.post(update, content=b"output=x", headers={"Content-Type": "text/plain"})
    assert as_form.status_code == 403  # what a plain HTML form on another site can send
    fetched = httpx.post(update, json={"output": "x"}, headers={"Sec-Fetch-Site": "cross-site"})
    assert fetched.status_code == 403


def test_what_the_enrichment_said_is_read_by_the_server_never_taken_from_the_browser(workbench):
    """The review keeps what the reviewer was shown: the server reads it again from the serving
    copy. A browser that sends its own (forged, or 5 MB of it) changes nothing."""
    import json

    page, data, session_id = workbench["page"], workbench["data"], workbench["session_id"]
    log = ReviewLog(data / "reviews")
    before = len(list(log.reviews()))

    def forge(route):
        body = json.loads(route.request.post_data or "{}")
        for state in body.get("state", []):
            if state.get("id") == "review-context" and isinstance(state.get("value"), dict):
                state["value"]["shown"] = {"provider": "forged", "padding": "x" * 5_000_000}
        route.continue_(post_data=json.dumps(body))

    page.goto(f"{workbench['dashboard'].url}/call/{session_id}")
    page.wait_for_selector("#review-save", timeout=30_000)
    page.route("**/_dash-update-component", forge)
    try:
        fill_review(page, "ana", REVIEWERS["ana"])
        page.click("#review-save")
        page.wait_for_selector(".review-saved", timeout=30_000)
    finally:
        page.unroute("**/_dash-update-component")
    reviews = list(log.reviews())
    assert len(reviews) == before + 1
    latest = max(reviews, key=lambda r: r.reviewed_at)
    assert latest.shown["provider"] not in (None, "forged") and "padding" not in latest.shown
