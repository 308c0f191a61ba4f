"""Retention that cannot lie (issue 47): run by the daily job with the wall clock moved
(libfaketime around the process, as the daemon would run it days later), every class expires
(recordings too), a call with no REST record or with only one expires without an error, what
expired stays expired, the daily aggregates do not move when the text behind them goes, and
`layercode-pipeline retention [--dry-run]` shows it on demo data, whose calls are aged by when
they were made."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from layercode_pipeline.cli import main
from layercode_pipeline.config import Settings
from layercode_pipeline.lib.recording_store import recording_store
from layercode_pipeline.lib.retention import RetentionPolicy, apply_retention
from layercode_pipeline.lib.warehouse import Warehouse

AGGREGATES = "select * exclude (built_at) from marts.agg_daily_call_metrics order by all"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    from layercode_pipeline.demo import run_demo
    from layercode_pipeline.simulator.server import free_port

    data = tmp_path_factory.mktemp("retention-demo") / "data"
    run_demo(data, 8, seed=23, processing_delay_s=0.0, receiver_port=free_port())
    return data


@pytest.fixture
def data(demo, tmp_path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(demo, copy, ignore=shutil.ignore_patterns("*.lock", "dagster_home"))
    return copy


def read(path: Path, sql: str, params: list | None = None) -> list[tuple]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def faketime_python(code: str, days: int, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`code` in a Python whose wall clock is `days` ahead (libfaketime, Debian's `faketime`)."""
    faketime = shutil.which("faketime")
    assert faketime, "libfaketime is needed (apt-get install faketime; .ci/run installs it)"
    return subprocess.run(
        [faketime, "-f", f"+{days}d", sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_daily_job_expires_recordings_and_text_with_the_clock_moved(data):
    assert list((data / "recordings").rglob("*.wav"))
    # the calls with no REST record are the ones whose text expiry failed every day
    read_write = duckdb.connect(str(data / "warehouse.duckdb"))
    read_write.execute("delete from raw.layercode_session_details")
    read_write.close()
    code = (
        "from layercode_pipeline.config import Settings\n"
        "from layercode_pipeline.definitions import build_definitions\n"
        "from layercode_pipeline.defs.resources import resources_from_settings\n"
        "job = build_definitions().get_job_def('retention_job')\n"
        "assert job.execute_in_process(resources=resources_from_settings(Settings())).success\n"
    )
    env = {
        "LAYERCODE_DATA_DIR": str(data),
        "LAYERCODE_RETENTION_RECORDINGS_DAYS": "30",
        "LAYERCODE_RETENTION_TEXT_DAYS": "30",
        "LAYERCODE_RETENTION_LANDING_DAYS": "30",
    }
    r = faketime_python(code, 75, env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not list((data / "recordings").rglob("*.wav"))
    statuses = {s for (s,) in read(data / "warehouse.duckdb", "select distinct status from raw.layercode_recordings")}
    assert "downloaded" not in statuses and "expired" in statuses
    assert read(
        data / "serving" / "analytics.duckdb", "select count(*) from marts.fct_turns where text is not null"
    ) == [(0,)]


def test_a_call_known_only_from_its_rest_record_expires(tmp_path):
    data = tmp_path / "data"
    wh = Warehouse.at(None, data_dir=data)
    started = datetime(2026, 1, 5, 10, tzinfo=UTC)
    with wh.open_for_writing() as con:
        con.execute(
            "insert into raw.layercode_session_details (agent_id, session_id, http_status, record, fetched_at) "
            "values ('ag', 'sess_rest_only', 200, ?::json, ?)",
            [
                '{"session_id": "sess_rest_only", "started_at": "2026-01-05T10:00:00Z", '
                '"transcript": [{"user_message": "my secret words", "assistant_message": "ok"}]}',
                started,
            ],
        )
    settings = Settings(data_dir=data)

    def on_day(days: int) -> dict[str, int]:
        return apply_retention(
            warehouse=wh,
            paths=settings.paths,
            recordings=recording_store(settings.storage(), settings.paths.recordings),
            policy=RetentionPolicy(text_days=30, landing_days=30),
            now=started + timedelta(days=days),
        )

    assert on_day(31)["text_sessions"] == 1
    [(record,)] = read(wh.path, "select record::varchar from raw.layercode_session_details")
    assert "my secret words" not in record and "sess_rest_only" in record
    assert on_day(32)["text_sessions"] == 0  # done once: the next day's run finds nothing new


def test_the_daily_aggregates_do_not_move_when_the_text_behind_them_expires(data):
    serving = data / "serving" / "analytics.duckdb"
    before = read(serving, AGGREGATES)
    sessions_before = read(serving, "select count(*) from marts.fct_sessions")
    turns_before = read(serving, "select count(*), count(latency_ms) from marts.fct_turns")
    rest_transcripts = read(
        data / "warehouse.duckdb",
        "select count(distinct session_id) from raw.layercode_session_details where json_array_length(record->'$.transcript') > 0",
    )[0][0]
    assert rest_transcripts > 0  # calls whose transcript came from the REST backfill (a dropped session.end)
    env = {
        "LAYERCODE_DATA_DIR": str(data),
        "LAYERCODE_RETENTION_TEXT_DAYS": "30",
        "LAYERCODE_RETENTION_LANDING_DAYS": "30",
    }
    # the retention job, on a clock moved 40 days on
    retention = (
        "from layercode_pipeline.config import Settings\n"
        "from layercode_pipeline.definitions import build_definitions\n"
        "from layercode_pipeline.defs.resources import resources_from_settings\n"
        "job = build_definitions().get_job_def('retention_job')\n"
        "assert job.execute_in_process(resources=resources_from_settings(Settings())).success\n"
    )
    r = faketime_python(retention, 40, env)
    assert r.returncode == 0, r.stderr[-3000:]
    # the hourly backfill asks the REST API again for these calls (a new fetch of each record)
    con = duckdb.connect(str(data / "warehouse.duckdb"))
    con.execute(
        "insert into raw.layercode_session_details "
        "select agent_id, session_id, http_status, record, 'recording_unresolved', now() + interval 40 day "
        "from raw.layercode_session_details"
    )
    con.close()
    # then the pipeline's next run, on the same clock: every expired call is touched by a load
    run = f"from pathlib import Path\nfrom layercode_pipeline.demo import materialize_all\nmaterialize_all(Path({str(data)!r}), api_url=None, api_key=None, grace_minutes=0)\n"
    r = faketime_python(run, 40, env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert read(serving, "select count(*) from marts.fct_turns where text is not null") == [(0,)]
    assert read(serving, "select count(*) from marts.fct_sessions") == sessions_before
    assert read(serving, "select count(*), count(latency_ms) from marts.fct_turns") == turns_before
    assert read(serving, AGGREGATES) == before


def test_retention_can_be_tried_on_demo_data_and_refuses_a_landing_kept_longer_than_text(data, monkeypatch):
    monkeypatch.setenv("LAYERCODE_DATA_DIR", str(data))
    for name in ("RECORDINGS", "TEXT", "LANDING", "REVIEWS"):
        monkeypatch.delenv(f"LAYERCODE_RETENTION_{name}_DAYS", raising=False)
    runner = CliRunner()
    r = runner.invoke(main, ["retention", "--text-days", "7", "--landing-days", "30"])
    assert r.exit_code == 2 and "LAYERCODE_RETENTION_LANDING_DAYS (30) must be set at or under" in r.output
    assert runner.invoke(main, ["retention", "--text-days", "7"]).exit_code == 2  # the landing kept forever
    assert runner.invoke(main, ["retention"]).exit_code == 2  # nothing set
    calls = read(data / "warehouse.duckdb", "select count(distinct session_id) from raw.layercode_events")[0][0]
    text_before = read(
        data / "warehouse.duckdb", 'select count(*) from raw.layercode_events where body like \'%"text":"%\''
    )
    r = runner.invoke(main, ["retention", "--dry-run", "--text-days", "7", "--landing-days", "7"])
    assert r.exit_code == 0, r.output
    would = int(r.output.split("would expire: ")[1].split(" sessions' text")[0])
    # the demo's calls were made over the last 30 days: those of the last week stay
    assert 0 < would < calls, r.output
    assert "dry run: nothing was changed" in r.output
    assert (
        read(data / "warehouse.duckdb", 'select count(*) from raw.layercode_events where body like \'%"text":"%\'')
        == text_before
    )
    r = runner.invoke(main, ["retention", "--text-days", "7", "--landing-days", "7"])
    assert r.exit_code == 0 and f"expired: {would} sessions' text (older than 7 days)" in r.output, r.output
