"""REST backfill and recordings against the simulator's REST API on loopback."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from layercode_pipeline.contract.landing import build_envelope
from layercode_pipeline.defs.backfill.assets import layercode_session_details
from layercode_pipeline.defs.ingest.assets import raw_layercode_events
from layercode_pipeline.defs.recordings.assets import layercode_recordings
from layercode_pipeline.defs.resources import LayercodeAPIResource, StorageResource
from layercode_pipeline.lib.wav import inspect_wav
from layercode_pipeline.simulator import SimulatorAPI, deliver, generate_batch, listener_secrets_json

KEY = "sk_sim_backfill_key"
FAULTS = {"drop_session_end": 0.3, "drop_session_update": 0.3}


def quiet_s(session) -> float:
    """Seconds of the simulated recording with no speech: each turn speaks for as long as its
    words take (simulator/audio.py's WORDS_PER_S) or until the next turn starts."""
    from layercode_pipeline.simulator.audio import WORDS_PER_S

    total = session.recording_samples / session.sample_rate
    starts = [t.offset_ms / 1000 for t in session.turns] + [total]
    spoken = sum(
        max(0.0, min(start + len(t.text.split()) / WORDS_PER_S, starts[i + 1], total) - start)
        for i, (t, start) in enumerate(zip(session.turns, starts, strict=False))
    )
    return total - spoken


@pytest.fixture(scope="module")
def landed(tmp_path_factory):
    """One simulated batch delivered with dropped webhooks through the real listener."""
    from .conftest import ListenerProcess

    base = tmp_path_factory.mktemp("landed")
    batch = generate_batch(30, seed=21)
    listener = ListenerProcess(base, env={"LAYERCODE_WEBHOOK_SECRETS": listener_secrets_json(batch)})
    report = deliver(batch, listener.url + "/agents/{agent_id}/webhook", faults=FAULTS, concurrency=8)
    listener.stop()
    assert report.failed == 0
    return batch, report, base / "landing"


@pytest.fixture
def env(landed, tmp_path):
    batch, report, landing = landed
    data = tmp_path / "data"
    shutil.copytree(landing, data / "landing")
    api = SimulatorAPI(api_key=KEY, seed=3, retry_after_s=1, slow_s=1.0)
    api.register(batch, ready_in_s=0)
    serving = api.serve()
    server = serving.__enter__()
    storage = StorageResource(data_dir=str(data))
    rest = LayercodeAPIResource(
        base_url=server.url + "/v1",
        api_key=KEY,
        timeout_s=0.5,
        backoff_initial_s=0.05,
        backoff_max_s=2.0,
        max_attempts=4,
    )
    yield {"batch": batch, "report": report, "api": api, "storage": storage, "rest": rest, "data": data}
    serving.__exit__(None, None, None)


def run(env, *assets, config: dict | None = None, rest: LayercodeAPIResource | None = None, raise_on_error=True):
    result = dg.materialize(
        list(assets),
        resources={"storage": env["storage"], "layercode_api": rest or env["rest"]},
        run_config={"ops": {"layercode_session_details": {"config": config}}} if config else None,
        raise_on_error=raise_on_error,
    )
    meta = {}
    for node in ("raw_layercode_events", "layercode_session_details", "layercode_recordings"):
        for mat in result.asset_materializations_for_node(node):
            meta[node] = {k: v.value for k, v in mat.metadata.items()}
    return result, meta


def query(env, sql: str):
    con = duckdb.connect(str(env["storage"].warehouse.path), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


ALL = (raw_layercode_events, layercode_session_details, layercode_recordings)
GRACE0 = {"grace_minutes": 0}


def test_gaps_are_filled_and_every_completed_recording_kept(env):
    batch, report = env["batch"], env["report"]
    dropped_end = {sid for sid, e in report.dropped if e == "session.end"}
    dropped_update = {sid for sid, e in report.dropped if e == "session.update"}
    assert dropped_end and dropped_update
    result, meta = run(env, *ALL, config=GRACE0)
    fetched = dict(query(env, "select session_id, reason from raw.layercode_session_details where http_status = 200"))
    expected_unresolved = {
        s.session_id
        for s in batch.sessions
        if s.session_id in dropped_update and s.session_id not in dropped_end and s.recording_enabled
    }
    assert {k for k, v in fetched.items() if v == "no_session_end"} == dropped_end
    assert {k for k, v in fetched.items() if v == "recording_unresolved"} == expected_unresolved
    # the REST record is stored as it came, but for the caller's IP address, dropped before it
    # is stored (LAYERCODE_KEEP_CALLER_IP is off by default)
    for s in (x for x in batch.sessions if x.session_id in dropped_end):
        (record,) = query(env, f"select record from raw.layercode_session_details where session_id = '{s.session_id}'")[
            0
        ]
        assert json.loads(record) == json.loads(json.dumps({**s.rest_record(recording_ready=True), "ip_address": None}))

    rows = {
        r[0]: r
        for r in query(
            env,
            "select session_id, status, path, bytes, sha256, sample_rate, channels, "
            "duration_s, error from raw.layercode_recordings",
        )
    }
    completed = {s.session_id: s for s in batch.sessions if s.recording_outcome == "completed"}
    failed_seen = {
        s.session_id for s in batch.sessions if s.recording_outcome == "failed" and s.session_id not in dropped_update
    }
    assert {k for k, r in rows.items() if r[1] == "downloaded"} == set(completed)
    assert {k for k, r in rows.items() if r[1] == "failed"} == failed_seen
    for sid, s in completed.items():
        _, _, path, size, sha, rate, channels, duration, _ = rows[sid]
        p = Path(path)
        assert p.relative_to(env["data"] / "recordings").parts[:2] == (
            f"agent={s.agent_id}",
            f"dt={s.started_at:%Y-%m-%d}",
        )
        info = inspect_wav(p)
        assert (size, rate, channels) == (p.stat().st_size, s.sample_rate, 1)
        real = s.recording_samples / s.sample_rate  # a cut-short recording is shorter than its call
        assert duration == pytest.approx(real, abs=0.001) == pytest.approx(info.duration_s, abs=0.001)
        assert hashlib.sha256(p.read_bytes()).hexdigest() == sha
    assert not list((env["data"] / "recordings").rglob("*.part"))
    assert meta["layercode_recordings"]["this_run_downloaded"] == len(completed)
    # the audio was measured, and the figures say what the simulator put in each file
    audio = {
        r[0]: r[1:]
        for r in query(
            env,
            "select session_id, silence_share, longest_silence_s, clipped_share, loudness_dbfs "
            "from raw.layercode_recordings where status = 'downloaded'",
        )
    }
    defects = {sid: s.audio_defect for sid, s in completed.items()}
    assert "silent" in defects.values() and "clipped" in defects.values()
    for sid, (silence, longest, clipped, loudness) in audio.items():
        if defects[sid] == "silent":
            assert (
                silence == 1.0
                and longest == pytest.approx(completed[sid].recording_samples / completed[sid].sample_rate, abs=0.02)
                and loudness < -60
            )
        elif quiet_s(completed[sid]) < 0.3:  # speech from start to end (a greeting longer than the call)
            assert silence < 0.05 and longest < 0.3 and -25 < loudness < -3, (sid, defects[sid])
        else:
            assert 0.05 < silence < 0.9 and 0.3 < longest < 30 and -25 < loudness < -3, (sid, defects[sid])
        assert (clipped > 0.01) == (defects[sid] == "clipped"), (sid, clipped)
    # the warning checks name exactly the recordings with each defect
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    for check, defect in (
        ("recordings_not_silent", "silent"),
        ("recordings_not_clipped", "clipped"),
        ("recording_length_matches_call", "cut_short"),
    ):
        named = {e["session_id"] for e in checks[check].metadata["examples"].value}
        with_defect = {sid for sid, d in defects.items() if d == defect}
        reported = {sid for sid in with_defect if sid not in dropped_update}  # the length check needs session.update
        expected = reported if defect == "cut_short" else with_defect
        assert named == expected, check
        assert checks[check].passed == (not expected) and checks[check].severity == dg.AssetCheckSeverity.WARN

    # a second run: no new REST rows, no second download, same rows
    before_rows = query(env, "select count(*) from raw.layercode_session_details")[0][0]
    downloads = env["api"].count("recording")
    _, meta = run(env, *ALL, config=GRACE0)
    assert query(env, "select count(*) from raw.layercode_session_details")[0][0] == before_rows
    assert env["api"].count("recording") == downloads
    assert meta["layercode_recordings"]["already_held"] == len(completed)
    assert query(env, "select count(*), count(distinct session_id) from raw.layercode_recordings")[0] == (
        len(rows),
        len(rows),
    )


def test_grace_period_holds_back_recent_sessions(env):
    _, meta = run(env, raw_layercode_events, layercode_session_details)  # default grace: 15 minutes
    assert meta["layercode_session_details"]["requested"] == 0
    assert env["api"].count() == 0


def a_gap_session(env) -> str:
    return next(sid for sid, e in env["report"].dropped if e == "session.end")


def only(env, sid: str) -> dict:
    return {
        "automatic": False,
        "agent_id": next(s.agent_id for s in env["batch"].sessions if s.session_id == sid),
        "session_ids": [sid],
    }


def test_429_with_retry_after_then_success(env):
    sid = a_gap_session(env)
    env["api"].script(sid, "rate_limit")
    started = time.monotonic()
    _, meta = run(env, raw_layercode_events, layercode_session_details, config=only(env, sid))
    assert time.monotonic() - started >= 1.0  # waited the server's Retry-After, not the 0.05 s backoff
    assert [s for k, x, s in env["api"].requests if x == sid] == [429, 200]
    assert meta["layercode_session_details"]["found"] == 1


def test_500_then_success_and_slow_answer_past_timeout(env):
    sid = a_gap_session(env)
    env["api"].script(sid, "server_error", "slow")
    _, meta = run(env, raw_layercode_events, layercode_session_details, config=only(env, sid))
    assert meta["layercode_session_details"]["found"] == 1
    statuses = [s for k, x, s in env["api"].requests if x == sid]
    assert statuses[:2] == [500, 0] and 200 in statuses[2:]  # 500, the slow one (timed out), then 200
    assert query(env, f"select http_status from raw.layercode_session_details where session_id = '{sid}'") == [(200,)]


def test_persistent_failure_is_isolated_and_retried_next_run(env):
    sid = a_gap_session(env)
    env["api"].script(sid, *["server_error"] * 4)
    result, meta = run(env, *ALL, config=GRACE0)
    assert meta["layercode_session_details"]["errors"] == 1 and meta["layercode_session_details"]["found"] > 1
    assert query(env, f"select count(*) from raw.layercode_session_details where session_id = '{sid}'") == [(0,)]
    # the failure is a row of its own, and a warning check on the asset says so
    errors = query(env, "select session_id, endpoint, error from raw.layercode_api_errors")
    assert [(e[0], e[1]) for e in errors] == [(sid, "session_details")] and "500" in errors[0][2]
    [check] = [c for c in result.get_asset_check_evaluations() if c.check_name == "no_api_errors"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    run(env, *ALL, config=GRACE0)
    assert query(env, f"select http_status from raw.layercode_session_details where session_id = '{sid}'") == [(200,)]


def test_401_fails_fast_without_leaking_the_key(env):
    wrong = LayercodeAPIResource(base_url=env["rest"].base_url, api_key="sk_wrong_key_123", backoff_initial_s=0.05)
    result, _ = run(env, *ALL, config=GRACE0, rest=wrong, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    text = str(failure.event_specific_data.error)
    assert "401" in text and "LAYERCODE_API_KEY" in text and "sk_wrong_key_123" not in text
    assert all(s == 401 for _, _, s in env["api"].requests)
    assert len(env["api"].requests) <= 8  # not retried forever


def test_404_recorded_and_not_asked_again_until_requested(env):
    data = env["storage"].paths.landing / "dt=2026-11-21" / "hour=09"
    data.mkdir(parents=True)
    body = json.dumps({"type": "session.start", "session_id": "sess_unknown", "turn_id": "t"}).encode()
    from datetime import UTC, datetime

    (data / "manual-000001.jsonl").write_bytes(
        build_envelope(
            received_at=datetime(2026, 11, 21, 9, tzinfo=UTC),
            agent_id="ag_support",
            event_type="session.start",
            content_sha256=hashlib.sha256(body).hexdigest(),
            body=body,
            headers={},
            writer_id="manual",
        )
    )
    _, meta = run(env, raw_layercode_events, layercode_session_details, config=GRACE0)
    assert query(
        env, "select http_status, record from raw.layercode_session_details where session_id = 'sess_unknown'"
    ) == [(404, None)]
    run(env, raw_layercode_events, layercode_session_details, config=GRACE0)
    assert env["api"].count("details", "sess_unknown") == 1
    run(
        env,
        raw_layercode_events,
        layercode_session_details,
        config={"agent_id": "ag_support", "session_ids": ["sess_unknown"], "automatic": False},
    )
    assert env["api"].count("details", "sess_unknown") == 2


def test_recording_not_ready_then_ready(env):
    api = env["api"]
    api.register(env["batch"], ready_in_s=3600)
    _, meta = run(env, *ALL, config=GRACE0)
    rec = meta["layercode_recordings"]
    assert rec["this_run_downloaded"] == 0 and rec["this_run_not_ready"] > 0
    assert not list((env["data"] / "recordings").rglob("*.wav"))
    api.make_ready()
    _, meta = run(env, *ALL, config=GRACE0)
    # the not-ready ones, plus those whose session.update was lost and whose REST record said
    # in_progress last time: the backfill asked again and now it says completed
    completed = sum(1 for s in env["batch"].sessions if s.recording_outcome == "completed")
    assert rec["this_run_not_ready"] < completed
    assert meta["layercode_recordings"]["this_run_downloaded"] == completed
    assert query(env, "select count(*) from raw.layercode_recordings where status = 'not_ready'") == [(0,)]


def test_truncated_wav_rejected_and_retried(env):
    completed = [s for s in env["batch"].sessions if s.recording_outcome == "completed"]
    once, always = completed[0], completed[1]
    env["api"].script(once.session_id, "ok", "truncated_wav")  # details ok (if asked), then a cut body
    expired = completed[2]  # a signed URL that expired before use (a details request may take one)
    env["api"].script(expired.session_id, "expired_url", "expired_url")
    env["api"].script(always.session_id, *["truncated_wav"] * 8)
    run(env, *ALL, config=GRACE0)
    rows = dict(query(env, "select session_id, status from raw.layercode_recordings"))
    assert rows[once.session_id] == "downloaded"
    assert rows[expired.session_id] == "downloaded"  # retried with a freshly signed URL
    storage = [st for kind, sid, st in env["api"].requests if kind == "storage" and sid == expired.session_id]
    assert 403 in storage and storage[-1] == 200
    assert rows[always.session_id] == "error"
    assert (
        "truncated"
        in query(env, f"select error from raw.layercode_recordings where session_id = '{always.session_id}'")[0][0]
    )
    assert not list((env["data"] / "recordings").rglob(f"{always.session_id}*"))
    env["api"].script(always.session_id)  # nothing scripted any more
    env["api"]._scripts[always.session_id].clear()
    run(env, *ALL, config=GRACE0)
    assert (
        dict(query(env, "select session_id, status from raw.layercode_recordings"))[always.session_id] == "downloaded"
    )


def test_hostile_session_id_never_reaches_the_file_system(env):
    from datetime import UTC, datetime

    land = env["storage"].paths.landing / "dt=2026-11-21" / "hour=09"
    land.mkdir(parents=True)
    lines = b""
    for sid in ("../../../../tmp/evil", "sess_ok/../../x", ".."):
        body = json.dumps(
            {"type": "session.update", "session_id": sid, "recording_status": "completed", "recording_url": "https://x"}
        ).encode()
        lines += build_envelope(
            received_at=datetime(2026, 11, 21, 9, tzinfo=UTC),
            agent_id="ag_support",
            event_type="session.update",
            content_sha256=hashlib.sha256(body).hexdigest(),
            body=body,
            headers={},
            writer_id="manual",
        )
    (land / "manual-000001.jsonl").write_bytes(lines)
    run(env, *ALL, config=GRACE0)
    rows = query(
        env, "select session_id, status, path, error from raw.layercode_recordings where session_id like '%..%'"
    )
    assert len(rows) == 3
    assert all(status == "error" and path is None and "not safe" in error for _, status, path, error in rows)
    assert not Path("/tmp/evil.wav").exists()
    assert all(env["data"] / "recordings" in p.parents for p in (env["data"] / "recordings").rglob("*"))


def test_backfill_cli_runs_the_backfill_asset(env, tmp_path):
    sid = a_gap_session(env)
    agent = next(s.agent_id for s in env["batch"].sessions if s.session_id == sid)
    ids = tmp_path / "ids.txt"
    ids.write_text(f"{sid}\nsess_missing\n")
    cli_env = {
        "LAYERCODE_DATA_DIR": str(env["data"]),
        "LAYERCODE_API_BASE_URL": env["rest"].base_url,
        "LAYERCODE_API_KEY": KEY,
        "PATH": "/usr/bin:/bin",
    }
    r = subprocess.run(
        [sys.executable, "-m", "layercode_pipeline.cli", "backfill", "--agent-id", agent, "--from-file", str(ids)],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr + r.stdout
    assert "found" in r.stdout and KEY not in r.stdout + r.stderr
    assert sorted(query(env, "select session_id, http_status from raw.layercode_session_details")) == sorted(
        [(sid, 200), ("sess_missing", 404)]
    )


def test_without_an_api_key_the_marts_still_refresh_and_checks_warn(env):
    """Optional configuration missing degrades, never blocks: every asset, dbt and the serving
    copy included, materialises; the REST assets say what waits for a key."""
    from layercode_pipeline.config import Settings
    from layercode_pipeline.definitions import build_definitions
    from layercode_pipeline.defs.resources import resources_from_settings

    defs = build_definitions()
    resources = resources_from_settings(Settings(data_dir=env["data"], api_key=None, openai_api_key=None))
    result = dg.materialize(
        list(defs.assets or []),
        resources=resources,
        raise_on_error=False,
        run_config={"ops": {"layercode_session_details": {"config": GRACE0}}},
    )
    assert result.success
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    for name, waiting in (("api_key_configured", "recordings_waiting_for_a_key"), ("no_api_errors", None)):
        assert not checks[name].passed and checks[name].severity == dg.AssetCheckSeverity.WARN, name
        if waiting:
            assert checks[name].metadata[waiting].value > 0
    served = duckdb.connect(str(env["data"] / "serving" / "analytics.duckdb"), read_only=True)
    try:
        sessions = served.execute("select count(*) from marts.fct_sessions").fetchone()[0]
    finally:
        served.close()
    webhook_sessions = query(env, "select count(distinct session_id) from staging.stg_webhook_events")[0][0]
    assert sessions == webhook_sessions > 0  # the marts refreshed from the webhooks alone
    # the UI gets every mart column typed, with its _schema.yml description
    (mat,) = [
        e.event_specific_data.materialization
        for e in result.get_asset_materialization_events()
        if e.event_specific_data.materialization.asset_key == dg.AssetKey(["marts", "fct_sessions"])
    ]
    columns = {c.name: c for c in mat.metadata["dagster/column_schema"].value.columns}
    assert len(columns) > 40 and columns["session_id"].type == "varchar"
    assert columns["latency_ms"].description and columns["latency_ms"].type == "double"


def test_a_kept_wav_that_broke_on_disk_fails_the_check_until_fetched_again(env):
    run(env, *ALL, config=GRACE0)
    (path,) = query(env, "select path from raw.layercode_recordings where status = 'downloaded' limit 1")[0]
    session_id = Path(path).stem
    with open(path, "r+b") as fh:  # same size, broken header (a disk fault, a hand edit)
        fh.write(b"JUNK")
    no_key = LayercodeAPIResource(base_url=env["rest"].base_url, api_key=None)
    result, _ = run(env, layercode_recordings, rest=no_key)
    [check] = [c for c in result.get_asset_check_evaluations() if c.check_name == "kept_wavs_valid"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert [e["session_id"] for e in check.metadata["examples"].value] == [session_id]
    result, _ = run(env, layercode_recordings)  # with the key: fetched again, verified, kept
    [check] = [c for c in result.get_asset_check_evaluations() if c.check_name == "kept_wavs_valid"]
    assert check.passed and inspect_wav(Path(path)).file_bytes == Path(path).stat().st_size


def test_bad_recordings_are_recorded_with_their_reason_and_kept_on_a_later_run(env):
    """A header that lies, a 0-byte file and a host that drips bytes: each is the recording's
    error with its reason, nothing of it is kept, no temporary file is left, the other
    recordings are kept; the next run keeps them all."""
    report = env["report"]
    dropped_update = {sid for sid, e in report.dropped if e == "session.update"}
    # sessions whose session.update arrived: the recordings asset finds them without REST
    completed = [
        s for s in env["batch"].sessions if s.recording_outcome == "completed" and s.session_id not in dropped_update
    ]
    lying, empty, drip = completed[:3]
    env["api"].script(lying.session_id, *["lying_header"] * 8)
    env["api"].script(empty.session_id, *["empty_wav"] * 8)
    env["api"].script(drip.session_id, "drip")
    rest = LayercodeAPIResource(**{**env["rest"].model_dump(), "recording_deadline_s": 4.0})
    result, meta = run(env, raw_layercode_events, layercode_recordings, rest=rest)
    assert result.success
    rows = {r[0]: r[1:] for r in query(env, "select session_id, status, error, path from raw.layercode_recordings")}
    assert rows[lying.session_id][:1] == ("error",) and "claims" in rows[lying.session_id][1]
    assert rows[empty.session_id][:1] == ("error",) and "not a RIFF/WAVE file" in rows[empty.session_id][1]
    assert rows[drip.session_id][:1] == ("error",) and "4 s deadline" in rows[drip.session_id][1]
    bad = {lying.session_id, empty.session_id, drip.session_id}
    assert all(rows[s.session_id][0] == "downloaded" for s in completed if s.session_id not in bad)
    recordings = env["data"] / "recordings"
    assert not [p for p in recordings.rglob("*") if p.is_file() and p.stem in bad]
    assert not [p for p in recordings.rglob("*") if p.is_file() and p.suffix == ".part"]
    for sid in bad:
        env["api"]._scripts[sid].clear()
    run(env, raw_layercode_events, layercode_recordings)
    statuses = dict(query(env, "select session_id, status from raw.layercode_recordings"))
    assert {statuses[sid] for sid in bad} == {"downloaded"}


def test_a_recording_over_the_size_cap_is_refused_until_the_cap_allows_it(env):
    report = env["report"]
    dropped_update = {sid for sid, e in report.dropped if e == "session.update"}
    completed = [
        s for s in env["batch"].sessions if s.recording_outcome == "completed" and s.session_id not in dropped_update
    ]
    sizes = {s.session_id: 44 + s.recording_data_bytes for s in completed}
    cap = sorted(sizes.values())[len(sizes) // 2]
    rest = LayercodeAPIResource(**{**env["rest"].model_dump(), "recording_max_bytes": cap})
    run(env, raw_layercode_events, layercode_recordings, rest=rest)
    rows = {r[0]: r[1:] for r in query(env, "select session_id, status, error from raw.layercode_recordings")}
    for sid, size in sizes.items():
        if size > cap:
            assert rows[sid][0] == "error" and "LAYERCODE_RECORDING_MAX_BYTES" in rows[sid][1], sid
        else:
            assert rows[sid][0] == "downloaded", sid
    assert any(size > cap for size in sizes.values())
    run(env, raw_layercode_events, layercode_recordings)
    assert {s for (s,) in query(env, "select distinct status from raw.layercode_recordings")} <= {
        "downloaded",
        "failed",
    }


def test_recordings_kept_before_the_audio_checks_are_measured_once(env):
    run(env, raw_layercode_events, layercode_recordings)
    before = dict(
        query(env, "select session_id, silence_share from raw.layercode_recordings where status = 'downloaded'")
    )
    con = duckdb.connect(str(env["storage"].warehouse.path))
    con.execute(
        "update raw.layercode_recordings set silence_share = null, clipped_share = null"
    )  # as an older release kept them
    con.close()
    no_key = LayercodeAPIResource(base_url=env["rest"].base_url, api_key=None)
    _, meta = run(env, layercode_recordings, rest=no_key)  # read from the store: no key, no download
    assert meta["layercode_recordings"]["measured_kept_recordings"] == len(before)
    assert (
        dict(query(env, "select session_id, silence_share from raw.layercode_recordings where status = 'downloaded'"))
        == before
    )
    _, meta = run(env, layercode_recordings, rest=no_key)
    assert meta["layercode_recordings"]["measured_kept_recordings"] == 0


def test_the_audio_thresholds_are_the_marts_thresholds():
    import yaml

    from layercode_pipeline.lib import audio

    project = yaml.safe_load((Path(__file__).parents[1] / "dbt_project" / "dbt_project.yml").read_text())["vars"]
    assert (project["audio_silent_share"], project["audio_clipped_share"], project["audio_length_tolerance_s"]) == (
        audio.SILENT_SHARE,
        audio.CLIPPED_SHARE,
        audio.LENGTH_TOLERANCE_S,
    )


def test_hostile_wav_files_are_each_set_aside_with_bounded_memory_and_the_stage_goes_on(env):
    """A header of 4,294,967,295 Hz or of 1 Hz, a walk of 100,000 chunks before the samples,
    and a body sent gzip-encoded that inflates to 256 MiB: each is that recording's error with
    its reason (nothing of it kept, no temporary file left), the others are kept, the next run
    succeeds, and the whole run's Python allocations stay far under what the gzip body inflates
    to (httpx inflated each network read whole: about 2 GB per MiB on the wire)."""
    import tracemalloc

    report = env["report"]
    dropped_update = {sid for sid, e in report.dropped if e == "session.update"}
    completed = [
        s for s in env["batch"].sessions if s.recording_outcome == "completed" and s.session_id not in dropped_update
    ]
    faults = ("absurd_rate", "one_hz", "tiny_chunks", "gzip_bomb")
    hostile = dict(zip((s.session_id for s in completed), faults, strict=False))
    for sid, fault in hostile.items():
        env["api"].script(sid, *[fault] * 20)
    from layercode_pipeline.simulator.api import gzip_bomb

    gzip_bomb()  # made once, before the measured run: the sender's cost is not the pipeline's
    rest = LayercodeAPIResource(**{**env["rest"].model_dump(), "recording_max_bytes": 300 * 1024 * 1024})
    tracemalloc.start()
    try:
        result, _ = run(env, raw_layercode_events, layercode_recordings, rest=rest)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.success
    print(f"peak {peak / 2**20:.0f} MiB")
    assert peak < 64 * 1024 * 1024, f"peak {peak / 2**20:.0f} MiB"
    rows = {r[0]: r[1:] for r in query(env, "select session_id, status, error from raw.layercode_recordings")}
    reasons = {
        "absurd_rate": "4294967295 Hz",
        "one_hz": " 1 Hz",
        "tiny_chunks": "more than 64 chunks",
        "gzip_bomb": "not a RIFF/WAVE file",  # inflated a piece at a time: all zeros
    }
    for sid, fault in hostile.items():
        assert rows[sid][0] == "error" and reasons[fault] in rows[sid][1], (
            fault,
            rows[sid],
            [r for r in env["api"].requests if r[1] == sid],
        )
    assert all(rows[s.session_id][0] == "downloaded" for s in completed if s.session_id not in hostile)
    recordings = env["data"] / "recordings"
    assert not [p for p in recordings.rglob("*") if p.is_file() and (p.stem in hostile or p.suffix == ".part")]
    again, _ = run(env, raw_layercode_events, layercode_recordings, rest=rest)
    assert again.success
