"""The whole chain: simulator (with faults) -> real listener -> every asset -> marts == ground truth."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path

import duckdb
import pytest

from layercode_pipeline.demo import DEMO_API_KEY, materialize_all, run_demo
from layercode_pipeline.lib.transcripts import turns_from_rest, turns_from_session_end
from layercode_pipeline.lib.wav import inspect_wav
from layercode_pipeline.simulator.server import free_port

FAULTS = {"drop_session_end": 0.15, "drop_session_update": 0.15, "duplicate": 0.1, "out_of_order": 0.2, "burst": 0.2}
API_FAULTS = {"rate_limit": 0.05, "server_error": 0.05}


def ts(iso: str) -> datetime:
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    data = tmp_path_factory.mktemp("chain") / "data"
    with pytest.MonkeyPatch.context() as mp:  # an operator promotes a metadata key to its own column
        mp.setenv("LAYERCODE_PROMOTED_METADATA_KEYS", "tenant_id")
        # a port of its own: a later test starts a receiver at the same address, and the demo's
        # usual port may by then belong to another test's demo
        result = run_demo(
            data, 80, seed=77, faults=FAULTS, api_faults=API_FAULTS, processing_delay_s=0.0, receiver_port=free_port()
        )
    con = duckdb.connect(str(data / "serving" / "analytics.duckdb"), read_only=True)
    yield result, con
    con.close()


def q(con, sql):
    cur = con.execute(sql)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def test_every_acknowledged_webhook_is_in_the_raw_table_once(chain):
    result, _ = chain
    report = result.report
    # every SSE reply was read to its end, except those torn down by a barge-in (after landing)
    assert report.failed == 0 and report.sse_torn > 0
    assert report.sse_complete + report.sse_torn == report.sse_replies
    acked = {a.content_sha256 for a in report.acknowledged}
    assert len(report.acknowledged) > len(acked)  # duplicates were delivered
    wh = duckdb.connect(str(result.data_dir / "warehouse.duckdb"), read_only=True)
    try:
        counts = dict(wh.execute("select content_sha256, count(*) from raw.layercode_events group by 1").fetchall())
    finally:
        wh.close()
    assert set(counts) == acked and set(counts.values()) == {1}


def expected_recording_state(truth: dict, dropped: set) -> str:
    """What the warehouse can know: the REST API says not_available both for a failed recording
    and for an org that does not record, so without the webhook saying which, that is the answer."""
    sid = truth["session_id"]
    if truth["recording_state"] == "failed" and (sid, "session.update") in dropped:
        return "not_available"
    if truth["recording_state"] == "disabled" and (sid, "session.end") in dropped:
        return "not_available"
    return truth["recording_state"]


def test_fct_sessions_reproduce_the_ground_truth(chain):
    result, con = chain
    truth = {s["session_id"]: s for s in result.batch.manifest()["sessions"]}
    dropped = set(result.report.dropped)
    rows = {r["session_id"]: r for r in q(con, "select * from marts.fct_sessions")}
    assert set(rows) == set(truth)
    wh = duckdb.connect(str(result.data_dir / "warehouse.duckdb"), read_only=True)
    try:
        rest_fetched = {
            sid
            for (sid,) in wh.execute(
                "select distinct session_id from raw.layercode_session_details where http_status = 200"
            ).fetchall()
        }
    finally:
        wh.close()
    # the agent whose session.end latency is in seconds had sessions known only through the webhook
    assert {truth[sid]["webhook_latency_unit"] for sid in set(truth) - rest_fetched} == {"s", "ms"}
    for sid, t in truth.items():
        r = rows[sid]
        end_dropped = (sid, "session.end") in dropped
        assert (r["agent_id"], r["conversation_id"], r["channel"]) == (
            t["agent_id"],
            t["conversation_id"],
            t["channel"],
        )
        assert (r["started_at"], r["ended_at"]) == (ts(t["started_at"]), ts(t["ended_at"]))
        assert r["duration_ms"] == t["duration_ms"] and r["latency_ms"] == pytest.approx(t["latency_ms"])
        assert r["transcription_duration_seconds"] == pytest.approx(t["transcription_duration_seconds"])
        assert r["tts_duration_seconds"] == pytest.approx(t["tts_duration_seconds"])
        assert (r["turns"], r["user_turns"], r["assistant_turns"]) == (
            t["turns"],
            t["user_turns"],
            t["assistant_turns"],
        )
        assert (r["user_words"], r["assistant_words"]) == (t["user_words"], t["assistant_words"])
        assert (r["from_phone_number"], r["country_code"]) == (t["from_phone_number"], t["country_code"])
        assert r["recording_state"] == expected_recording_state(t, dropped), sid
        assert r["has_recording"] == (t["recording_state"] == "completed")
        if r["has_recording"]:
            assert r["recording_duration_s"] == pytest.approx(t["recording_duration_s"], abs=0.001)
        assert r["ended_by"] == ("backfill" if end_dropped else "webhook")
        assert r["transcript_source"] == ("rest" if end_dropped else "webhook")
        assert r["enrichment_provider"] == "offline" and r["sentiment"] is not None
        # contract section 5: agents, metadata, headers, barge-ins, data events, latency units
        assert r["agent_name"] == t["agent_name"]
        assert json.loads(r["metadata"]) == t["metadata"], (sid, t["metadata_field"])
        assert r["metadata_tenant_id"] == t["metadata"]["tenant_id"]  # promoted by configuration
        kept = {k: v for k, v in json.loads(r["request_headers"]).items() if k.startswith("x-")}
        assert kept == t["custom_headers"]
        assert r["interruptions"] == t["interruptions"] and r["data_events"] == len(t["data_events"])
        # contract section 6: barge-ins of a hosted agent's calls are unknown, not zero; every
        # reported barge-in was placed, though messages are reworded, typed or carry no turn id
        assert r["barge_ins_observable"] == t["barge_ins_observable"]
        assert r["unplaced_interruptions"] == (0 if t["barge_ins_observable"] else None)
        assert r["latency_source"] == ("rest" if sid in rest_fetched else "session.end")
        if r["webhook_latency_unit"] is not None:  # learned where a REST record and a session.end met
            assert r["webhook_latency_unit"] == {"s": "seconds", "ms": "milliseconds"}[t["webhook_latency_unit"]]
        if r["has_recording"]:
            fmt = t["recording_format"]
            assert (r["recording_sample_rate"], r["recording_encoding"]) == (fmt["sample_rate"], fmt["encoding"])
    # the seconds were converted (latency_ms matched the truth above) for webhook-only sessions
    assert any(r["latency_source"] == "session.end" and r["webhook_latency_unit"] == "seconds" for r in rows.values())
    backfilled = sum(1 for r in rows.values() if r["ended_by"] == "backfill")
    assert backfilled == sum(1 for _, e in dropped if e == "session.end") > 0


def test_fct_turns_and_conversations_reproduce_the_ground_truth(chain):
    result, con = chain
    manifest = result.batch.manifest()
    turns: dict[str, list] = {}
    for r in q(con, "select session_id, position, role, text, words, offset_ms from marts.fct_turns order by 1, 2"):
        turns.setdefault(r["session_id"], []).append(r)
    barge_ins = {
        (r["session_id"], r["position"]): [r["position"], r["words_heard"], r["text_heard"]]
        for r in q(con, "select * from marts.fct_turns where interrupted")
    }
    assert len(barge_ins) == sum(t["interruptions"] or 0 for t in manifest["sessions"]) > 0
    for t in manifest["sessions"]:
        assert [barge_ins[(t["session_id"], p)] for p, _, _ in t["interrupted_turns"]] == t["interrupted_turns"]
        got = turns.get(t["session_id"], [])
        assert [[x["role"], x["text"]] for x in got] == t["turn_texts"]
        assert [x["position"] for x in got] == list(range(1, len(got) + 1))
        assert all(x["words"] == len(x["text"].split()) for x in got)
        assert all(x["offset_ms"] is None or 0 <= x["offset_ms"] <= t["duration_ms"] for x in got)
    convs = {r["conversation_id"]: r for r in q(con, "select * from marts.fct_conversations")}
    assert set(convs) == {c["conversation_id"] for c in manifest["conversations"]}
    assert any(c["sessions"] > 1 for c in manifest["conversations"])  # reconnects are in the data
    for c in manifest["conversations"]:
        r = convs[c["conversation_id"]]
        assert (r["sessions"], r["duration_ms"], r["turns"], r["agent_id"]) == (
            c["sessions"],
            c["duration_ms"],
            c["turns"],
            c["agent_id"],
        )
        assert (r["started_at"], r["ended_at"]) == (ts(c["started_at"]), ts(c["ended_at"]))


def test_daily_metrics_reproduce_the_ground_truth(chain):
    result, con = chain
    sessions = result.batch.manifest()["sessions"]
    dropped = set(result.report.dropped)
    expected: dict[tuple, Counter] = {}
    for t in sessions:
        key = (ts(t["started_at"]).date(), t["agent_id"])
        c = expected.setdefault(key, Counter())
        c["sessions"] += 1
        c["recorded"] += t["recording_state"] == "completed"
        c["expected"] += expected_recording_state(t, dropped) in ("completed", "failed", "in_progress")
    calls: dict[tuple, set] = {}
    for t in sessions:
        calls.setdefault((ts(t["started_at"]).date(), t["agent_id"]), set()).add(t["conversation_id"])
    rows = q(con, "select * from marts.agg_daily_call_metrics")
    assert {(r["call_date"], r["agent_id"]) for r in rows} == set(expected)
    for r in rows:
        e = expected[(r["call_date"], r["agent_id"])]
        assert r["sessions"] == e["sessions"] and r["calls"] == len(calls[(r["call_date"], r["agent_id"])])
        assert r["sessions_with_recording"] == e["recorded"]
        assert r["recording_coverage"] == (pytest.approx(e["recorded"] / e["expected"]) if e["expected"] else None)
        durations = sorted(
            t["duration_ms"]
            for t in sessions
            if (ts(t["started_at"]).date(), t["agent_id"]) == (r["call_date"], r["agent_id"])
        )
        assert r["duration_ms_avg"] == pytest.approx(sum(durations) / len(durations))


def test_every_completed_recording_is_on_disk_with_a_valid_header(chain):
    result, con = chain
    completed = [s for s in result.batch.sessions if s.recording_outcome == "completed"]
    paths = dict(
        con.execute("select session_id, recording_path from marts.fct_sessions where has_recording").fetchall()
    )
    assert set(paths) == {s.session_id for s in completed}
    # every encoding and rate, and headers with a streaming writer's placeholder sizes
    assert {(s.sample_rate, s.wav_format) for s in completed} >= {(8000, "pcm"), (8000, "mulaw"), (16000, "pcm")}
    assert any(s.wav_placeholder is not None for s in completed)
    for s in completed:  # every variant was downloaded through the redirect to the storage host and kept
        info = inspect_wav(Path(paths[s.session_id]))
        assert (info.sample_rate, info.channels, info.encoding) == (s.sample_rate, 1, s.wav_format)
        assert info.size_placeholder == (s.wav_placeholder is not None)
        assert info.duration_s == pytest.approx(s.recording_samples / s.sample_rate, abs=0.001)  # cut short: shorter
    # the published audio checks say what the simulator put in each file
    flags = {
        r["session_id"]: r
        for r in q(
            con, "select session_id, recording_uri, is_silent, is_clipped, length_mismatch from marts.fct_recordings"
        )
    }
    for s in completed:
        r = flags[s.session_id]
        assert r["recording_uri"] == paths[s.session_id]
        assert (r["is_silent"], r["is_clipped"]) == (s.audio_defect == "silent", s.audio_defect == "clipped")
        if r["length_mismatch"] is not None:  # null when the session.update (the reported length) was lost
            # a file cut short is a mismatch when it misses more than the tolerance (dbt var
            # audio_length_tolerance_s): 40% of a call under 7.5 s is not (the demo's dates, and so
            # its calls, follow today's date)
            missing_s = round(s.duration_ms / 1000, 3) - s.recording_samples / s.sample_rate
            assert r["length_mismatch"] == (s.audio_defect == "cut_short" and missing_s > 3.0), (
                s.session_id,
                missing_s,
            )
    assert {s.audio_defect for s in completed} >= {None, "silent", "clipped"}


def test_agents_and_data_events_reach_the_marts(chain):
    result, con = chain
    agents = {r["agent_id"]: r for r in q(con, "select * from marts.dim_agents")}
    assert set(agents) == {a.agent_id for a in result.batch.agents}
    for a in result.batch.agents:
        r = agents[a.agent_id]
        assert (r["agent_name"], r["phone_numbers"], r["known_to_api"]) == (a.name, a.phone_numbers, True)
        assert r["backend"] == a.backend  # from GET /v1/agents/{id}: why a hosted agent's barge-ins are unknown
    daily = q(con, "select agent_id, agent_name from marts.agg_daily_call_metrics")
    assert all(r["agent_name"] == agents[r["agent_id"]]["agent_name"] for r in daily)
    events = q(con, "select session_id, turn_id, data from marts.fct_data_events")
    expected = sorted(
        (s.session_id, turn, json.dumps(d, sort_keys=True))
        for s in result.batch.sessions
        for turn, d in s.data_events
        if s.agent.backend == "agent.webhook"
    )  # a hosted agent's data events never reach us
    assert (
        expected
        and sorted((e["session_id"], e["turn_id"], json.dumps(json.loads(e["data"]), sort_keys=True)) for e in events)
        == expected
    )


def test_python_and_dbt_transcript_normalisation_agree(chain):
    """The enrichment's turn list (Python) and fct_turns (SQL) come from the same raw rows."""
    result, con = chain
    wh = duckdb.connect(str(result.data_dir / "warehouse.duckdb"), read_only=True)
    try:
        ends = dict(
            wh.execute(
                "select session_id, body->'$.transcript' from raw.layercode_events where event_type = 'session.end'"
            ).fetchall()
        )
        rest = dict(
            wh.execute(
                "select session_id, record->'$.transcript' from raw.layercode_session_details where http_status = 200"
            ).fetchall()
        )
    finally:
        wh.close()
    sql_turns: dict[str, list] = {}
    for sid, role, text in con.execute(
        "select session_id, role, text from marts.fct_turns order by session_id, position"
    ).fetchall():
        sql_turns.setdefault(sid, []).append((role, text))
    for sid in set(ends) | set(rest):
        py = turns_from_session_end(json.loads(ends[sid])) if sid in ends else turns_from_rest(json.loads(rest[sid]))
        assert [(t.role, t.text) for t in py] == sql_turns.get(sid, [])


def test_a_second_run_changes_nothing(chain):
    result, con = chain
    tables = ("fct_sessions", "fct_turns", "fct_conversations", "agg_daily_call_metrics")
    before = {t: con.execute(f"select * from marts.{t} order by all").fetchall() for t in tables}
    wh_counts = (
        "select (select count(*) from raw.layercode_events), (select count(*) from raw.layercode_session_details), "
        "(select count(*) from raw.layercode_recordings), (select count(*) from enrichment.session_enrichments)"
    )
    wh = duckdb.connect(str(result.data_dir / "warehouse.duckdb"), read_only=True)
    counts_before = wh.execute(wh_counts).fetchone()
    wh.close()
    from layercode_pipeline.simulator import SimulatorAPI

    api = SimulatorAPI(api_key=DEMO_API_KEY)
    api.register(result.batch, ready_in_s=0)
    with api.serve() as server:
        meta = materialize_all(result.data_dir, api_url=server.url + "/v1", api_key=DEMO_API_KEY, grace_minutes=0)
    assert api.count("recording") == 0  # nothing downloaded twice
    assert meta["raw_layercode_events"]["rows_inserted"] == 0
    assert meta["session_enrichments"]["llm_calls"] == 0
    wh = duckdb.connect(str(result.data_dir / "warehouse.duckdb"), read_only=True)
    assert wh.execute(wh_counts).fetchone() == counts_before
    wh.close()
    fresh = duckdb.connect(str(result.data_dir / "serving" / "analytics.duckdb"), read_only=True)
    try:
        for t in tables:
            assert fresh.execute(f"select * from marts.{t} order by all").fetchall() == before[t], t
    finally:
        fresh.close()


def test_dbt_docs_generate(chain, tmp_path):
    result, _ = chain
    project = Path(__file__).resolve().parents[1] / "dbt_project"
    env = {"LAYERCODE_WAREHOUSE": str(result.data_dir / "warehouse.duckdb"), "PATH": str(Path(sys.executable).parent)}
    r = subprocess.run(
        [
            str(Path(sys.executable).parent / "dbt"),
            "docs",
            "generate",
            "--profiles-dir",
            str(project),
            "--project-dir",
            str(project),
            "--target-path",
            str(tmp_path / "target"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-2000:]
    catalog = json.loads((tmp_path / "target" / "catalog.json").read_text())
    assert "model.layercode_analytics.fct_sessions" in catalog["nodes"]


def test_each_analysed_call_reached_the_customers_product_signed(chain):
    """The demo's receiver verified every delivery with the `standardwebhooks` package; each
    analysed session arrived once (by webhook-id) with the facts and analysis the marts hold."""
    from layercode_pipeline.lib.result_webhooks.messages import CALL_ANALYZED, CALL_RECORDING_READY

    result, con = chain
    receiver = result.receiver
    assert receiver.rejected == 0
    analysed = receiver.unique(CALL_ANALYZED)
    by_session = {r.session_id: r.body for r in analysed.values()}
    assert len(by_session) == len(analysed)  # one message per session and analysis
    rows = {
        r["session_id"]: r for r in q(con, "select * from marts.fct_sessions where enrichment_provider is not null")
    }
    assert set(by_session) == set(rows)
    for sid, body in by_session.items():
        data, row = body["data"], rows[sid]
        assert body["type"] == "call.analyzed" and body["schema_version"] == 1
        assert data["agent_id"] == row["agent_id"] and data["conversation_id"] == row["conversation_id"]
        assert data["agent_name"] == row["agent_name"]
        for field in ("summary", "caller_name", "sentiment", "outcome", "quality_score"):
            assert data["analysis"][field] == row[field], (sid, field)
        assert data["analysis"]["provider"] == row["enrichment_provider"] == "offline"
        assert data["duration_ms"] == (round(row["duration_ms"], 1) if row["duration_ms"] is not None else None)
    kept = {r["session_id"] for r in q(con, "select session_id from marts.fct_sessions where has_recording")}
    assert {r.session_id for r in receiver.unique(CALL_RECORDING_READY).values()} == kept


def test_rematerialising_sends_nothing_and_a_reanalysis_sends_one_new_message(chain):
    import dagster as dg

    from layercode_pipeline.config import Settings
    from layercode_pipeline.definitions import build_definitions
    from layercode_pipeline.defs.resources import resources_from_settings
    from layercode_pipeline.demo import deliver_results
    from layercode_pipeline.lib.result_webhooks.messages import CALL_ANALYZED
    from layercode_pipeline.lib.result_webhooks.outbox import Outbox
    from layercode_pipeline.lib.result_webhooks.signing import new_secret
    from layercode_pipeline.simulator.receiver import ResultReceiver
    from layercode_pipeline.simulator.server import BackgroundServer

    result, _ = chain
    secret = new_secret()  # the demo's receiver is gone: a new one on its address, a rotated secret
    receiver = ResultReceiver(secret)
    port = int(result.receiver_url.split(":")[2].split("/")[0])
    endpoints = json.dumps([{"url": result.receiver_url, "secret": secret}])
    settings = Settings(data_dir=result.data_dir, result_webhooks=endpoints)
    outbox = Outbox(settings.outbox)
    before = len(outbox.deliveries())
    assets = build_definitions().assets
    selection = dg.AssetSelection.groups("enrichment", "results")

    def materialise(prompt_version: str | None = None) -> None:
        run_config = (
            {"ops": {"session_enrichments": {"config": {"prompt_version": prompt_version}}}} if prompt_version else {}
        )
        r = dg.materialize(
            assets, selection=selection, resources=resources_from_settings(settings), run_config=run_config
        )
        assert r.success

    with BackgroundServer(receiver.app, port=port):
        materialise()
        deliver_results(settings)
        assert len(outbox.deliveries()) == before and receiver.requests == 0  # nothing changed, nothing sent
        materialise(prompt_version="v2-test")
        deliver_results(settings)
    analysed = receiver.unique(CALL_ANALYZED)
    sessions = [r.session_id for r in analysed.values()]
    assert len(sessions) == len(set(sessions)) == len(result.receiver.unique(CALL_ANALYZED))
    assert {r.body["data"]["analysis"]["prompt_version"] for r in analysed.values()} == {"v2-test"}
    assert receiver.rejected == 0
