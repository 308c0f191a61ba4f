"""Forgetting a caller, checked as a privacy officer would: calls carrying a known phone
number, name and sentence go through webhooks, REST backfill, recordings, enrichment, a
review and result webhooks into a real Dagster instance; `layercode-pipeline forget` runs;
then every byte the pipeline and Dagster wrote is searched (files as bytes; DuckDB and
Parquet through DuckDB, as their strings are compressed), and none of the three is found.
Every other session's marts are unchanged, and a re-delivery of the call's webhooks with a
REST backfill does not bring it back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from layercode_pipeline.dagster_instance import initialise_instance
from layercode_pipeline.demo import materialize_all
from layercode_pipeline.lib.result_webhooks.outbox import Outbox
from layercode_pipeline.lib.reviews import ReviewLog, build_review
from layercode_pipeline.simulator import SimulatorAPI, deliver, generate_batch, listener_secrets_json

from .conftest import KEY_ID, REGION, SECRET_KEY, ListenerProcess, make_bucket

PHONE = "+15550100999"
NAME = "Zelda Quixote-Marlowe"
SENTENCE = "the purple giraffe sings at midnight"
KEY = "sim_api_key_privacy"
ENDPOINTS = json.dumps([{"url": "http://127.0.0.1:9/results", "secret": "whsec_" + "A" * 43 + "="}])


def the_batch():
    batch = generate_batch(6, seed=92)
    caller = next(s for s in batch.sessions if s.from_phone_number and s.recording_outcome == "completed")
    caller.from_phone_number = PHONE
    caller.caller_name = NAME
    caller.audio_defect = "silent"  # the recordings asset's warning check names the session in Dagster
    user = next(t for t in caller.turns if t.role == "user")
    user.text = f"Hi, this is {NAME}. My account password hint is {SENTENCE}."
    return batch, caller


def pipeline_run(data: Path, api_url: str, home: Path, storage_env: dict[str, str]) -> None:
    """Every asset, as the deployment's instance runs them, with the storage the mode names."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in storage_env.items():
            mp.setenv(name, value)
        with dg.DagsterInstance.from_config(str(home)) as instance:
            if "LAYERCODE_RECORDINGS_URL" not in storage_env:
                materialize_all(
                    data, api_url=api_url, api_key=KEY, grace_minutes=0, instance=instance, result_webhooks=ENDPOINTS
                )
                return
            from pydantic import SecretStr

            from layercode_pipeline.config import Settings
            from layercode_pipeline.definitions import build_definitions
            from layercode_pipeline.defs.resources import resources_from_settings

            settings = Settings(
                data_dir=data, api_base_url=api_url, api_key=SecretStr(KEY), result_webhooks=SecretStr(ENDPOINTS)
            )
            result = dg.materialize(
                list(build_definitions().assets or []),
                resources=resources_from_settings(settings),
                instance=instance,
                run_config={"ops": {"layercode_session_details": {"config": {"grace_minutes": 0}}}},
                raise_on_error=False,
            )
            assert result.success


def s3_hits(storage_env: dict[str, str], needles: list[str]) -> list[str]:
    """Where any needle is in the objects of the landing and recordings buckets."""
    if "AWS_ENDPOINT_URL" not in storage_env:
        return []
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=storage_env["AWS_ENDPOINT_URL"],
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET_KEY,
        region_name=REGION,
    )
    found = []
    for bucket in (LANDING_BUCKET, RECORDINGS_BUCKET):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                data = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
                found += [f"s3://{bucket}/{obj['Key']}: {n}" for n in needles if n.encode() in data]
    return found


def every_hit(root: Path, needles: list[str]) -> list[str]:
    """Where any needle is: each file's bytes, and each DuckDB or Parquet file's strings."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if data[8:12] == b"DUCK" or path.suffix == ".duckdb":
            found += [f"{path}: {hit}" for hit in duckdb_hits(path, needles)]
        elif path.suffix == ".parquet":
            con = duckdb.connect()
            text = con.execute(f"select string_agg(t::varchar, ' ') from read_parquet('{path}') t").fetchone()[0] or ""
            con.close()
            found += [f"{path}: {n}" for n in needles if n in text]
        else:
            found += [f"{path}: {n}" for n in needles if n.encode() in data]
    return found


def duckdb_hits(path: Path, needles: list[str]) -> list[str]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        hits = []
        tables = con.execute(
            "select schema_name, table_name from duckdb_tables() where database_name = current_database()"
        ).fetchall()
        for schema, table in tables:
            rows = con.execute(f'select string_agg(t::varchar, \' \') from "{schema}"."{table}" t').fetchone()[0] or ""
            hits += [f"{schema}.{table}: {n}" for n in needles if n in rows]
        return hits
    finally:
        con.close()


LANDING_BUCKET, RECORDINGS_BUCKET = "privacy-landing", "privacy-recordings"


def storage_env_for(mode: str, request) -> dict[str, str]:
    if mode == "local":
        return {}
    endpoint = request.getfixturevalue("s3_endpoint")
    for bucket in (LANDING_BUCKET, RECORDINGS_BUCKET):
        make_bucket(endpoint, bucket)
    return {
        "LAYERCODE_LANDING_URL": f"s3://{LANDING_BUCKET}/events",
        "LAYERCODE_LANDING_MODE": "bucket",
        "LAYERCODE_RECORDINGS_URL": f"s3://{RECORDINGS_BUCKET}/wav",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": REGION,
    }


@pytest.fixture(scope="module", params=["local", "s3"])
def forgotten(tmp_path_factory, request):
    base = tmp_path_factory.mktemp(f"privacy-{request.param}")
    data, home = base / "data", initialise_instance(base / "data" / "dagster_home")
    storage_env = storage_env_for(request.param, request)
    batch, caller = the_batch()
    listener = ListenerProcess(data, env={"LAYERCODE_WEBHOOK_SECRETS": listener_secrets_json(batch), **storage_env})
    report = deliver(batch, listener.url + "/agents/{agent_id}/webhook", concurrency=8)
    assert report.failed == 0
    listener.stop()
    api = SimulatorAPI(api_key=KEY, seed=5)
    api.register(batch, ready_in_s=0)
    with api.serve() as server:
        review = build_review(
            {
                "session_id": caller.session_id,
                "reviewer": "ana",
                "caller_name": NAME,
                "outcome": "resolved",
                "sentiment": "neutral",
                "quality_score": 4,
                "comment": f"caller {NAME} said {SENTENCE}",
            },
            known_sessions=None,
            topics=[],
        )
        ReviewLog(data / "reviews").append(review)  # saved in the workbench before the run
        pipeline_run(data, server.url + "/v1", home, storage_env)
        needles = [PHONE, NAME, SENTENCE]
        before = every_hit(data, needles) + s3_hits(storage_env, needles)
        # it was everywhere: landing, warehouse, serving, outbox, reviews
        assert any("landing" in h for h in before) and any("warehouse.duckdb" in h for h in before)
        assert any("analytics.duckdb" in h for h in before) and any("reviews" in h for h in before)
        others_before = other_sessions(data, caller.session_id)
        # Dagster's own records name the session (check examples, log lines): scrubbed too
        named_in_dagster = every_hit(home, [caller.session_id])
        env = {
            **os.environ,
            "LAYERCODE_DATA_DIR": str(data),
            "LAYERCODE_RESULT_WEBHOOKS": ENDPOINTS,
            "COLUMNS": "200",
            **storage_env,
        }
        r = subprocess.run(
            [sys.executable, "-m", "layercode_pipeline.cli", "forget", "--phone-number", PHONE],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr + r.stdout
        yield {
            "data": data,
            "home": home,
            "batch": batch,
            "caller": caller,
            "needles": needles,
            "others_before": others_before,
            "stdout": r.stdout,
            "api_url": server.url + "/v1",
            "named_in_dagster": named_in_dagster,
            "storage_env": storage_env,
        }


def other_sessions(data: Path, erased: str) -> list[tuple]:
    con = duckdb.connect(str(data / "serving" / "analytics.duckdb"), read_only=True)
    try:
        return con.execute(
            "select * exclude (built_at) from marts.fct_sessions where session_id <> ? order by session_id", [erased]
        ).fetchall()
    finally:
        con.close()


def test_forget_reports_what_it_removed_per_store(forgotten):
    out = forgotten["stdout"]
    assert "1 sessions forgotten" in out
    for store in ("raw.layercode_events", "marts.fct_sessions", "landing events", "recordings", "reviews"):
        assert store in out, store


def test_no_byte_anywhere_holds_the_number_the_name_or_the_sentence(forgotten):
    assert every_hit(forgotten["data"], forgotten["needles"]) == []
    assert s3_hits(forgotten["storage_env"], forgotten["needles"]) == []


def test_dagsters_records_no_longer_name_the_session(forgotten):
    assert forgotten["named_in_dagster"]  # they did before
    assert every_hit(forgotten["home"], [forgotten["caller"].session_id]) == []


def test_every_other_session_is_unchanged_and_the_audit_has_no_personal_data(forgotten):
    data = forgotten["data"]
    assert other_sessions(data, forgotten["caller"].session_id) == forgotten["others_before"]
    con = duckdb.connect(str(data / "warehouse.duckdb"), read_only=True)
    try:
        [(kind, sessions, removed, hashes)] = con.execute(
            "select selector_kind, sessions, removed, selector_hashes from raw.erasure_audit"
        ).fetchall()
    finally:
        con.close()
    assert (kind, sessions) == ("phone", 1) and json.loads(removed)["raw.layercode_events"] > 0
    assert PHONE not in str(hashes) and forgotten["caller"].session_id not in removed
    # the customer's endpoint is told to delete its copy
    erased = [m for m in Outbox(data / "outbox" / "result_webhooks.sqlite3").deliveries() if m["type"] == "call.erased"]
    assert {m["session_id"] for m in erased} == {forgotten["caller"].session_id}


def test_a_redelivery_and_a_rest_backfill_do_not_bring_the_caller_back(forgotten):
    data, caller = forgotten["data"], forgotten["caller"]
    listener = ListenerProcess(
        data, env={"LAYERCODE_WEBHOOK_SECRETS": listener_secrets_json(forgotten["batch"]), **forgotten["storage_env"]}
    )
    from layercode_pipeline.simulator.generate import SimBatch

    again = SimBatch(seed=0, agents=forgotten["batch"].agents, sessions=[caller])
    assert deliver(again, listener.url + "/agents/{agent_id}/webhook", concurrency=4).failed == 0
    listener.stop()
    api = SimulatorAPI(api_key=KEY, seed=6)
    api.register(forgotten["batch"], ready_in_s=0)
    with api.serve() as server:
        pipeline_run(data, server.url + "/v1", forgotten["home"], forgotten["storage_env"])
    con = duckdb.connect(str(data / "serving" / "analytics.duckdb"), read_only=True)
    try:
        assert con.execute(
            "select count(*) from marts.fct_sessions where session_id = ?", [caller.session_id]
        ).fetchone() == (0,)
    finally:
        con.close()
    wh = duckdb.connect(str(data / "warehouse.duckdb"), read_only=True)
    try:
        for table in ("raw.layercode_events", "raw.layercode_session_details", "raw.layercode_recordings"):
            assert wh.execute(f"select count(*) from {table} where session_id = ?", [caller.session_id]).fetchone() == (
                0,
            )
    finally:
        wh.close()
    outbox = Outbox(data / "outbox" / "result_webhooks.sqlite3").deliveries()
    assert [m["type"] for m in outbox if m["session_id"] == caller.session_id] == ["call.erased"]


def test_retention_expires_recordings_text_landing_and_reviews_and_keeps_the_numbers(tmp_path):
    from datetime import UTC, datetime, timedelta

    from layercode_pipeline.config import Settings
    from layercode_pipeline.demo import run_demo
    from layercode_pipeline.lib.recording_store import recording_store
    from layercode_pipeline.lib.retention import RetentionPolicy, apply_retention
    from layercode_pipeline.lib.warehouse import Warehouse
    from layercode_pipeline.simulator.server import free_port

    data = tmp_path / "data"
    result = run_demo(data, 6, seed=23, processing_delay_s=0.0, receiver_port=free_port())
    review = build_review(
        {
            "session_id": result.batch.sessions[0].session_id,
            "reviewer": "ana",
            "outcome": "resolved",
            "sentiment": "neutral",
            "quality_score": 3,
            "comment": "a reviewer's words",
        },
        known_sessions=None,
        topics=[],
    )
    ReviewLog(data / "reviews").append(review)
    serving = data / "serving" / "analytics.duckdb"
    numbers = (
        "select * exclude (built_at) from marts.agg_daily_call_metrics order by all",
        "select session_id, duration_ms, turns, user_words, assistant_words, outcome, sentiment, quality_score, "
        "recording_duration_s from marts.fct_sessions order by session_id",
        "select session_id, position, role, offset_ms, latency_ms, interrupted from marts.fct_turns order by all",
    )

    def read(sql):
        con = duckdb.connect(str(serving), read_only=True)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()

    before = [read(q) for q in numbers]
    said = sorted({t.text for s in result.batch.sessions for t in s.turns if len(t.text) > 20})
    assert list((data / "recordings").rglob("*.wav")) and every_hit(data, said[:3])
    settings = Settings(data_dir=data)
    done = apply_retention(
        warehouse=Warehouse.at(None, data_dir=data),
        paths=settings.paths,
        recordings=recording_store(settings.storage(), settings.paths.recordings),
        policy=RetentionPolicy(recordings_days=30, text_days=30, landing_days=30, reviews_days=30),
        outbox_path=settings.outbox,
        now=datetime.now(UTC) + timedelta(days=400),  # the clock moved forward
    )
    assert done["recordings"] > 0 and done["text_sessions"] == len(result.batch.sessions)
    assert done["landing_segments"] > 0 and done["review_files"] == 1
    assert not list((data / "recordings").rglob("*.wav"))
    assert not list((data / "landing").rglob("*.jsonl")) and not list((data / "reviews").glob("*.jsonl"))
    # nothing anyone said is left, in any file or table; the numbers are as they were
    assert every_hit(data, [*said, "a reviewer's words"]) == []
    assert [read(q) for q in numbers] == before
    assert read("select count(*) from marts.fct_turns where text is not null") == [(0,)]
    assert {r[0] for r in read("select distinct download_status from marts.fct_recordings")} <= {"expired", "failed"}
