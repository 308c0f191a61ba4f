"""`layercode-pipeline demo`: what a newcomer runs first."""

from __future__ import annotations

import os
import subprocess
import sys

import duckdb


def run_demo_cli(data_dir, calls: int) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAYERCODE_", "OPENAI_", "DAGSTER_HOME"))}
    return subprocess.run([sys.executable, "-m", "layercode_pipeline.cli", "demo", "--calls", str(calls),
                           "--data-dir", str(data_dir)], env={**env, "COLUMNS": "160"}, capture_output=True,
                          text=True, timeout=600)


def test_demo_twice_adds_calls_without_duplicating(tmp_path):
    data = tmp_path / "data"
    r = run_demo_cli(data, 12)
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-3000:]
    assert "marts.agg_daily_call_metrics" in r.stdout and "dagster dev -w workspace.yaml" in r.stdout
    assert "by offline" in r.stdout and "serving" in r.stdout
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
