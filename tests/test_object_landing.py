"""Listeners on several hosts landing into object storage (a real S3-compatible server, moto
in server mode, on loopback), in both modes; one replica is SIGKILLed mid-load, and the ingest
finds every acknowledged event exactly once."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import dagster as dg
import duckdb
import httpx
import orjson
import pytest

from layercode_pipeline.config import Settings
from layercode_pipeline.defs.ingest.assets import raw_layercode_events
from layercode_pipeline.defs.resources import resources_from_settings
from layercode_pipeline.simulator import deliver, generate_batch, listener_secrets_json
from layercode_pipeline.simulator.generate import SimBatch
from layercode_pipeline.simulator.server import free_port

from .conftest import KEY_ID, REGION, SECRET_KEY, ListenerProcess, make_bucket


def listener_env(endpoint: str, url: str, mode: str, batch) -> dict[str, str]:
    return {
        "LAYERCODE_WEBHOOK_SECRETS": listener_secrets_json(batch),
        "LAYERCODE_LANDING_URL": url,
        "LAYERCODE_LANDING_MODE": mode,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": REGION,
        "LAYERCODE_SEGMENT_MAX_AGE_S": "0.5",
        "LAYERCODE_LANDING_SHIP_INTERVAL_S": "0.2",
    }


def pipeline_storage(tmp_path: Path, endpoint: str, url: str):
    """The pipeline's StorageResource over the landing bucket `url`."""
    settings = Settings(
        data_dir=tmp_path / "pipeline",
        landing_url=url,
        aws_endpoint_url=endpoint,
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET_KEY,
        aws_region=REGION,
    )
    return resources_from_settings(settings)["storage"]


def ingest(tmp_path: Path, endpoint: str, url: str) -> dict:
    storage = pipeline_storage(tmp_path, endpoint, url)
    result = dg.materialize([raw_layercode_events], resources={"storage": storage})
    meta = result.asset_materializations_for_node("raw_layercode_events")[0].metadata
    return {k: v.value for k, v in meta.items()} | {"warehouse": storage.warehouse.path}


def health(listener: ListenerProcess) -> dict:
    return httpx.get(listener.url + "/healthz", timeout=5).json()


@pytest.mark.parametrize("mode", ["bucket", "local+ship"])
def test_two_replicas_one_killed_every_acknowledged_event_once(tmp_path, s3_endpoint, mode):
    bucket = "landing-" + mode.replace("+", "-")
    make_bucket(s3_endpoint, bucket)
    url = f"s3://{bucket}/events"
    batch = generate_batch(60, seed=77)  # enough that replica A is still busy when it is killed
    halves = [SimBatch(batch.seed, batch.agents, batch.sessions[i::2]) for i in (0, 1)]
    env = listener_env(s3_endpoint, url, mode, batch)
    a = ListenerProcess(tmp_path / "host-a", env=env)
    b = ListenerProcess(tmp_path / "host-b", env=env)
    writer_a, writer_b = health(a)["writer_id"], health(b)["writer_id"]
    assert writer_a != writer_b
    assert health(a)["landing"]["mode"] == mode and health(a)["landing"]["url"] == url

    reports = {}

    def send(name: str, half: SimBatch, listener: ListenerProcess) -> None:
        reports[name] = deliver(half, listener.url + "/agents/{agent_id}/webhook", faults={}, concurrency=4)

    threads = [
        threading.Thread(target=send, args=("a", halves[0], a)),
        threading.Thread(target=send, args=("b", halves[1], b)),
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while health(a)["landed"] < 40:  # mid-load: some of A's events are in, most are still coming
        assert time.monotonic() < deadline, "replica A never got going"
        time.sleep(0.01)
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(10)
    for t in threads:
        t.join(120)
    assert reports["a"].failed > 0, "the kill came after A's load was over"
    assert len(reports["a"].acknowledged) >= 40

    if mode == "bucket":
        h = health(b)  # one PUT per group, never one per event
        assert h["objects_written"] < h["landed"] and h["failed_writes"] == 0
    b.stop()
    if mode == "local+ship":
        # A's next start seals what the kill left open and ships it (its backlog is visible meanwhile)
        spool = tmp_path / "host-a" / "landing"
        assert any(spool.rglob("*.jsonl*")), "nothing was left to ship after the kill"
        a2 = ListenerProcess(tmp_path / "host-a", env=env)
        deadline = time.monotonic() + 30
        while health(a2)["landing"]["unshipped_segments"] > 0 or any(spool.rglob("*.jsonl")):
            assert time.monotonic() < deadline, health(a2)
            time.sleep(0.1)
        a2.stop()
        assert not any((tmp_path / "host-b" / "landing").rglob("*.jsonl*")), "B's graceful stop shipped it all"

    first = ingest(tmp_path, s3_endpoint, url)
    acked = [att for rep in reports.values() for att in rep.acknowledged]
    con = duckdb.connect(str(first["warehouse"]), read_only=True)
    try:
        counts = dict(con.execute("select content_sha256, count(*) from raw.layercode_events group by 1").fetchall())
        writers = {r[0] for r in con.execute("select distinct writer_id from raw.layercode_events").fetchall()}
        sources = con.execute(
            "select count(*) from raw.layercode_ingested_files where path like ?", [url + "/dt=%"]
        ).fetchone()[0]
    finally:
        con.close()
    missing = [att for att in acked if att.content_sha256 not in counts]
    assert missing == [], f"{len(missing)} acknowledged events were lost"
    assert all(counts[att.content_sha256] == 1 for att in acked), "an acknowledged event was counted twice"
    assert writers == {writer_a, writer_b}
    assert sources == first["new_files"] > 0

    again = ingest(tmp_path, s3_endpoint, url)  # incremental: nothing new, and only recent hours listed
    assert again["new_files"] == 0 and again["rows_inserted"] == 0
    assert again["partitions_listed"] <= 5


def test_bucket_mode_answers_503_when_the_store_is_down(tmp_path):
    batch = generate_batch(2, seed=5)
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: every PUT fails
    listener = ListenerProcess(tmp_path / "host", env=listener_env(dead, "s3://nowhere/events", "bucket", batch))
    try:
        report = deliver(batch, listener.url + "/agents/{agent_id}/webhook", faults={}, concurrency=2)
        assert report.acknowledged == [] and {a.status for a in report.log} == {503}
        assert health(listener)["failed_writes"] == report.sent
    finally:
        listener.stop()


def test_local_ship_acknowledges_while_the_store_is_down_and_shows_the_backlog(tmp_path, s3_endpoint):
    batch = generate_batch(3, seed=6)
    dead = f"http://127.0.0.1:{free_port()}"
    env = listener_env(dead, "s3://later/events", "local+ship", batch)
    listener = ListenerProcess(tmp_path / "host", env=env)
    report = deliver(batch, listener.url + "/agents/{agent_id}/webhook", faults={}, concurrency=2)
    assert report.failed == 0
    deadline = time.monotonic() + 40  # sealed by age, then a ship attempt fails after its bounded retries
    while (landing := health(listener)["landing"])["unshipped_segments"] == 0 or landing["ship_errors"] == 0:
        assert time.monotonic() < deadline, landing
        time.sleep(0.1)
    assert landing["unshipped_bytes"] > 0 and landing["last_ship_error"]
    listener.stop()

    # the store comes back: the next start ships the backlog, and the ingest finds every event once
    make_bucket(s3_endpoint, "later")
    env = listener_env(s3_endpoint, "s3://later/events", "local+ship", batch)
    again = ListenerProcess(tmp_path / "host", env=env)
    deadline = time.monotonic() + 20
    while health(again)["landing"]["unshipped_segments"] > 0:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    again.stop()
    result = ingest(tmp_path, s3_endpoint, "s3://later/events")
    assert result["rows_inserted"] == len(report.acknowledged)


def test_forget_rewrites_a_landed_object_without_the_erased_sessions_events(s3_endpoint):
    from layercode_pipeline.landing.erase import erase_landing_objects
    from layercode_pipeline.landing.objects import ObjectLanding

    make_bucket(s3_endpoint, "erase-landing")
    landing = ObjectLanding(
        "s3://erase-landing/events",
        endpoint=s3_endpoint,
        region=REGION,
        access_key_id=KEY_ID,
        secret_access_key=SECRET_KEY,
    )
    import obstore

    lines = [
        orjson.dumps({"body": orjson.dumps({"type": "session.end", "session_id": sid}).decode()}) + b"\n"
        for sid in ("sess_keep", "sess_gone", "sess_keep")
    ]
    key = "dt=2026-11-20/hour=09/w1-000001.jsonl"
    obstore.put(landing.store(), key, b"".join(lines))
    assert erase_landing_objects(landing, [landing.object_url(key)], {"sess_gone"}) == 1
    kept = bytes(obstore.get(landing.store(), key).bytes())
    assert kept == lines[0] + lines[2]  # the same name, the other events untouched
    assert erase_landing_objects(landing, [landing.object_url(key)], {"sess_gone"}) == 0


def test_an_erased_callers_redelivery_does_not_stay_in_the_landed_objects(tmp_path, s3_endpoint):
    """The ingest drops a landed event of an erased session (its tombstone) and writes the
    object again without it, under the same name (issue 47)."""
    import obstore

    from layercode_pipeline.config import load_privacy_key
    from layercode_pipeline.landing.objects import ObjectLanding
    from layercode_pipeline.lib import privacy
    from layercode_pipeline.lib.recording_store import recording_store

    from .test_erasure import start

    make_bucket(s3_endpoint, "erase-ingest")
    url = "s3://erase-ingest/events"
    landing = ObjectLanding(
        url, endpoint=s3_endpoint, region=REGION, access_key_id=KEY_ID, secret_access_key=SECRET_KEY
    )
    from .test_voice_metrics import envelope

    def put(key: str, *bodies: dict) -> None:
        obstore.put(landing.store(), key, b"".join(envelope(b, 100 + i, "ag_a") for i, b in enumerate(bodies)))

    put("dt=2026-11-20/hour=09/w1-000001.jsonl", start("sess_gone", "+15550101010"), start("sess_keep"))
    assert ingest(tmp_path, s3_endpoint, url)["rows_inserted"] == 2
    storage = pipeline_storage(tmp_path, s3_endpoint, url)
    privacy.forget(
        warehouse=storage.warehouse,
        paths=storage.paths,
        key=load_privacy_key(storage.paths.data_dir),
        selectors=[privacy.Selector("phone", "+15550101010")],
        recordings=recording_store(storage.storage(), storage.paths.recordings),
        object_landing=storage.object_landing,
    )
    # a re-delivery of the erased session, and a new call of the same number, land later
    from datetime import UTC, datetime

    from layercode_pipeline.landing.objects import hour_prefix, object_key

    late = object_key(hour_prefix(datetime.now(UTC)), "w1", 2)  # where a listener puts it now
    put(late, start("sess_gone", "+15550101010"), start("sess_new", "+15550101010"), start("sess_other"))
    result = ingest(tmp_path, s3_endpoint, url)
    assert result["erased_events_dropped"] == 2 and result["rows_inserted"] == 1
    kept = bytes(obstore.get(landing.store(), late).bytes())
    assert b"sess_other" in kept and b"sess_gone" not in kept and b"+15550101010" not in kept
