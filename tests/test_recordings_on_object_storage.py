"""Recordings kept on object storage (moto's S3 server on loopback): verified, measured and
written to the store through the landing's client, nothing left on local disk, the marts
pointing at each object; a file is never overwritten, a large one goes up in parts, and a
store that is down is each recording's error, retried on the next run."""

from __future__ import annotations

import hashlib
import shutil

import dagster as dg
import duckdb
import pytest

from layercode_pipeline.defs.dbt.assets import dbt_resource, layercode_dbt_models
from layercode_pipeline.defs.ingest.assets import raw_layercode_events
from layercode_pipeline.defs.recordings.assets import layercode_recordings
from layercode_pipeline.defs.resources import LayercodeAPIResource, StorageResource
from layercode_pipeline.lib.recording_store import RecordingConflict
from layercode_pipeline.lib.wav import wav_header
from layercode_pipeline.simulator import SimulatorAPI
from layercode_pipeline.simulator.server import free_port

from .conftest import KEY_ID, REGION, SECRET_KEY, make_bucket
from .test_backfill_recordings import KEY, landed  # noqa: F401  (the module's landed batch)

BUCKET = "call-recordings"


def s3_client(endpoint: str):
    import boto3  # the test's own S3 client, to look at what the pipeline (obstore) wrote

    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET_KEY, region_name=REGION
    )


def storage_on(data, endpoint: str, prefix: str) -> StorageResource:
    return StorageResource(
        data_dir=str(data),
        recordings_url=f"s3://{BUCKET}/{prefix}",
        aws_endpoint_url=endpoint,
        aws_region=REGION,
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET_KEY,
    )


@pytest.fixture
def env(landed, tmp_path, s3_endpoint, request):  # noqa: F811
    batch, report, landing = landed
    data = tmp_path / "data"
    shutil.copytree(landing, data / "landing")
    try:
        make_bucket(s3_endpoint, BUCKET)
    except Exception as exc:  # noqa: BLE001 - the module's tests share one server and bucket
        if "BucketAlreadyOwnedByYou" not in str(exc):
            raise
    api = SimulatorAPI(api_key=KEY, seed=3)
    api.register(batch, ready_in_s=0)
    with api.serve() as server:
        rest = LayercodeAPIResource(base_url=server.url + "/v1", api_key=KEY, backoff_initial_s=0.05, max_attempts=3)
        yield {
            "batch": batch,
            "report": report,
            "data": data,
            "rest": rest,
            "endpoint": s3_endpoint,
            "storage": storage_on(data, s3_endpoint, request.node.name),
            "prefix": request.node.name,
        }


def recordings_run(env, storage=None):
    return dg.materialize(
        [raw_layercode_events, layercode_recordings],
        resources={"storage": storage or env["storage"], "layercode_api": env["rest"]},
    )


def rows(storage: StorageResource) -> dict[str, tuple]:
    con = duckdb.connect(str(storage.warehouse.path), read_only=True)
    try:
        return {
            r[0]: r[1:]
            for r in con.execute(
                "select session_id, status, path, bytes, sha256, error, silence_share from raw.layercode_recordings"
            ).fetchall()
        }
    finally:
        con.close()


def expected_sessions(env) -> dict:
    dropped_update = {sid for sid, e in env["report"].dropped if e == "session.update"}
    return {
        s.session_id: s
        for s in env["batch"].sessions
        if s.recording_outcome == "completed" and s.session_id not in dropped_update
    }


def test_recordings_are_kept_on_the_store_and_the_marts_point_at_them(env):
    assert recordings_run(env).success
    kept = rows(env["storage"])
    wanted = expected_sessions(env)
    s3 = s3_client(env["endpoint"])
    for sid, s in wanted.items():
        status, uri, size, sha, error, silence = kept[sid]
        assert status == "downloaded" and error is None and silence is not None
        # dated by the session's start, or when it was first heard of (its session.end may be lost)
        assert uri.startswith(f"s3://{BUCKET}/{env['prefix']}/agent={s.agent_id}/dt=") and uri.endswith(f"/{sid}.wav")
        key = uri.removeprefix(f"s3://{BUCKET}/")
        obj = s3.get_object(Bucket=BUCKET, Key=key)
        body = obj["Body"].read()
        assert len(body) == size == 44 + s.recording_data_bytes and hashlib.sha256(body).hexdigest() == sha
        assert obj["ContentType"] == "audio/wav"
    # nothing on local disk but empty scratch directories
    assert not [p for p in env["data"].rglob("*.wav")] + [p for p in env["data"].rglob("*.part")]
    # the marts say where each file is, and what its audio says
    result = dg.materialize(
        [layercode_dbt_models], resources={"storage": env["storage"], "dbt": dbt_resource()}, raise_on_error=False
    )
    assert result.success
    con = duckdb.connect(str(env["storage"].warehouse.path), read_only=True)
    try:
        mart = {
            r[0]: r[1:]
            for r in con.execute(
                "select session_id, recording_uri, duration_s, reported_duration_s, is_silent, is_clipped, "
                "length_mismatch from marts.fct_recordings"
            ).fetchall()
        }
    finally:
        con.close()
    for sid, s in wanted.items():
        uri, duration, reported, silent, clipped, mismatch = mart[sid]
        assert uri == kept[sid][1]
        assert duration == pytest.approx(s.recording_samples / s.sample_rate, abs=0.001)
        assert reported == pytest.approx(s.duration_ms / 1000, abs=0.001)
        assert (silent, clipped, mismatch) == (
            s.audio_defect == "silent",
            s.audio_defect == "clipped",
            s.audio_defect == "cut_short",
        ), sid
    # a second run finds every object where it was kept and fetches nothing
    result = recordings_run(env)
    [check] = [c for c in result.get_asset_check_evaluations() if c.check_name == "kept_wavs_valid"]
    assert check.passed and check.metadata["kept"].value == len(wanted)


def test_a_deleted_object_fails_the_check_and_is_fetched_again(env):
    assert recordings_run(env).success
    sid, (_, uri, *_rest) = next(iter(sorted(rows(env["storage"]).items())))
    s3_client(env["endpoint"]).delete_object(Bucket=BUCKET, Key=uri.removeprefix(f"s3://{BUCKET}/"))
    result = recordings_run(env)
    [check] = [c for c in result.get_asset_check_evaluations() if c.check_name == "kept_wavs_valid"]
    assert check.passed  # found missing, fetched again in the same run
    assert rows(env["storage"])[sid][0] == "downloaded"
    s3_client(env["endpoint"]).head_object(Bucket=BUCKET, Key=uri.removeprefix(f"s3://{BUCKET}/"))


def test_a_store_that_is_down_is_each_recordings_error_until_it_is_back(env):
    down = storage_on(env["data"], f"http://127.0.0.1:{free_port()}", env["prefix"])  # nothing listens there
    result = recordings_run(env, down)
    assert result.success  # never stops the run
    kept = rows(down)
    wanted = expected_sessions(env)
    assert {kept[sid][0] for sid in wanted} == {"error"}
    assert all(kept[sid][4] for sid in wanted)  # each with its reason
    assert not list(env["data"].rglob("*.part")) and not list(env["data"].rglob("*.wav"))
    assert recordings_run(env).success  # the store is back: every one is kept
    assert {rows(env["storage"])[sid][0] for sid in wanted} == {"downloaded"}


def test_the_store_never_overwrites_and_sends_large_files_in_parts(env, tmp_path):
    store = env["storage"].recording_store()
    frames = 6 * 1024 * 1024  # 16-bit mono: a 12 MB file, over the multipart threshold
    big = tmp_path / "big.wav"
    big.write_bytes(wav_header(frames * 2) + bytes(frames * 2))
    key = "agent=ag_test/dt=2026-11-20/sess_big.wav"
    uri = store.put(big, key)
    head = s3_client(env["endpoint"]).head_object(Bucket=BUCKET, Key=f"{env['prefix']}/{key}")
    assert head["ContentLength"] == big.stat().st_size
    assert "-" in head["ETag"]  # a multipart upload's ETag: <md5 of the parts' md5s>-<parts>
    assert store.put(big, key) == uri  # the same file again (a run killed before its row): accepted
    small = tmp_path / "small.wav"
    small.write_bytes(wav_header(800) + bytes(800))
    with pytest.raises(RecordingConflict):
        store.put(small, key)  # a different file under a kept name: refused, never overwritten
    small_key = "agent=ag_test/dt=2026-11-20/sess_small.wav"
    store.put(small, small_key)
    other = tmp_path / "other.wav"
    other.write_bytes(wav_header(1600) + bytes(1600))
    with pytest.raises(RecordingConflict):
        store.put(other, small_key)  # the conditional PUT (If-None-Match) refuses it
    assert (
        s3_client(env["endpoint"]).head_object(Bucket=BUCKET, Key=f"{env['prefix']}/{small_key}")["ContentLength"]
        == small.stat().st_size
    )
