"""`layercode-pipeline demo`: what a newcomer runs first."""

from __future__ import annotations

import os
import subprocess
import sys

import duckdb


def run_demo_cli(data_dir, calls: int) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAYERCODE_", "OPENAI_", "DAGSTER_HOME"))}
    return subprocess.run(
        [sys.executable, "-m", "layercode_pipeline.cli", "demo", "--calls", str(calls), "--data-dir", str(data_dir)],
        env={**env, "COLUMNS": "160"},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_demo_twice_adds_calls_without_duplicating(tmp_path):
    data = tmp_path / "data"
    r = run_demo_cli(data, 12)
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-3000:]
    assert "marts.agg_daily_call_metrics" in r.stdout and "dagster dev -w workspace.yaml" in r.stdout
    assert "by offline" in r.stdout and "serving" in r.stdout
    assert "barge-ins" in r.stdout and "barge %" in r.stdout and "Acme Support" in r.stdout  # agent names
    assert "turn latency p95" in r.stdout and "interruption rate" in r.stdout
    # each hint is one line, whole (a pasted copy keeps every variable)
    lines = r.stdout.splitlines()
    assert any(
        line.strip().startswith("DAGSTER_HOME=")
        and line.rstrip().endswith("dagster dev -w workspace.yaml")
        and "LAYERCODE_API_BASE_URL=" in line
        for line in lines
    )
    assert any(
        line.strip().startswith(f"LAYERCODE_DATA_DIR={data.resolve()} LAYERCODE_REVIEWERS=")
        and line.rstrip().endswith(".venv/bin/layercode-pipeline dashboard")
        for line in lines
    )
    assert "http://127.0.0.1:8050/review" in r.stdout  # the workbench's address
    # the audio checks' summary: recordings measured where they are kept, silent ones counted
    flat = " ".join(" ".join(line.strip(" │").split()) for line in lines)  # the panel wraps long rows
    assert f"recordings measured in {(data / 'recordings').resolve()}: " in flat and " silent, " in flat
    con = duckdb.connect(str(data / "serving" / "analytics.duckdb"), read_only=True)
    calls_1 = con.execute("select count(*) from marts.fct_conversations").fetchone()[0]
    con.close()
    assert calls_1 == 12
    r = run_demo_cli(data, 8)
    assert r.returncode == 0, r.stderr[-3000:]
    con = duckdb.connect(str(data / "serving" / "analytics.duckdb"), read_only=True)
    assert con.execute("select count(*) from marts.fct_conversations").fetchone()[0] == 20
    assert con.execute("select count(*) - count(distinct session_id) from marts.fct_sessions").fetchone()[0] == 0
    con.close()
    assert not list((data / "landing").rglob("*.open"))  # nothing left unsealed


def test_ctrl_c_stops_cleanly(tmp_path):
    import signal
    import time

    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAYERCODE_", "OPENAI_", "DAGSTER_HOME"))}
    # As from a terminal: SIGINT at its default. A child inherits an ignored SIGINT, and the test
    # process may have one (something earlier in the session, e.g. a first `dbt parse`, left it so).
    proc = subprocess.Popen(
        [sys.executable, "-m", "layercode_pipeline.cli", "demo", "--calls", "400", "--data-dir", str(data)],
        env={**env, "COLUMNS": "160"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # interrupt once the listener is up and calls are flowing
        line = proc.stdout.readline()
        if "listener on" in line:
            break
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, out[-2000:]
    assert "Interrupted" in out
    assert not list((data / "landing").rglob("*.open"))  # the listener sealed its segment on the way out
    assert list((data / "landing").rglob("*.jsonl"))  # what it acknowledged is kept for the next run
