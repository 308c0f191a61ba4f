"""`forget_job` (the Dagster form of `forget`) and the ingest's tombstones, on a small landing:
the run config names a file, never an identifier; a forgotten caller's late webhook is
dropped at ingest, by session and by phone number, and nobody else's is."""

from __future__ import annotations

import dagster as dg
import duckdb

from layercode_pipeline.config import Settings
from layercode_pipeline.definitions import build_definitions
from layercode_pipeline.defs.ingest.assets import raw_layercode_events
from layercode_pipeline.defs.resources import resources_from_settings

from .test_voice_metrics import envelope


def land(storage, segment: int, *bodies: dict) -> None:
    part = storage.paths.landing / "dt=2026-11-20" / "hour=09"
    part.mkdir(parents=True, exist_ok=True)
    (part / f"wtest-{segment:06d}.jsonl").write_bytes(
        b"".join(envelope(b, 100 + i, "ag_a") for i, b in enumerate(bodies))
    )


def start(sid: str, phone: str | None = None) -> dict:
    body = {"type": "session.start", "session_id": sid, "agent_id": "ag_a", "conversation_id": f"conv_{sid}"}
    return body | ({"from_phone_number": phone} if phone else {})


def sessions(storage) -> set[str]:
    con = duckdb.connect(str(storage.warehouse.path), read_only=True)
    try:
        return {r[0] for r in con.execute("select distinct session_id from raw.layercode_events").fetchall()}
    finally:
        con.close()


def test_forget_job_then_late_events_of_the_forgotten_are_dropped_at_ingest(tmp_path):
    resources = resources_from_settings(Settings(data_dir=tmp_path / "data"))
    storage = resources["storage"]
    land(storage, 1, start("sess_keep"), start("sess_gone"), start("sess_phone", "+15550007777"))
    assert dg.materialize([raw_layercode_events], resources=resources).success
    assert sessions(storage) == {"sess_keep", "sess_gone", "sess_phone"}
    ids = tmp_path / "forget.txt"
    ids.write_text("# a request from the privacy team\nsession:sess_gone\n+15550007777\n")
    job = build_definitions().get_job_def("forget_job")
    result = job.execute_in_process(
        run_config={"ops": {"forget_callers": {"config": {"from_file": str(ids)}}}}, resources=resources
    )
    assert result.success
    assert sessions(storage) == {"sess_keep"}
    # late webhooks: the forgotten session, a new session of the forgotten number, and someone else
    land(storage, 2, start("sess_gone"), start("sess_new_call", "+15550007777"), start("sess_other"))
    result = dg.materialize([raw_layercode_events], resources=resources)
    [mat] = result.asset_materializations_for_node("raw_layercode_events")
    assert mat.metadata["erased_events_dropped"].value == 2
    assert sessions(storage) == {"sess_keep", "sess_other"}
    con = duckdb.connect(str(storage.warehouse.path), read_only=True)
    try:
        [(by, kind, n)] = con.execute("select requested_by, selector_kind, sessions from raw.erasure_audit").fetchall()
        hashes = con.execute("select key_hash from raw.erasure_tombstones").fetchall()
    finally:
        con.close()
    assert (by, kind, n) == ("dagster", "phone,session", 2)
    assert all(len(h) == 64 and "sess_" not in h for (h,) in hashes)  # keyed hashes, never the identifiers


def test_phone_numbers_hashed_and_ip_dropped_before_landing_and_forget_finds_the_hash(tmp_path):
    import httpx
    import orjson

    from layercode_pipeline.contract.minimise import phone_hash
    from layercode_pipeline.contract.signing import sign
    from layercode_pipeline.simulator.server import BackgroundServer
    from webhook_listener.app import create_app

    secret = "whsec_minimise"
    settings = Settings(
        data_dir=tmp_path / "data", webhook_secret=secret, hash_phone_numbers=True, segment_idle_seal_s=0.1
    )
    resources = resources_from_settings(settings)
    storage = resources["storage"]
    key = storage.privacy_key_value()
    with BackgroundServer(create_app(settings)) as server:
        for sid in ("sess_a", "sess_b"):
            body = orjson.dumps(start(sid, "+15550008888") | {"ip_address": "203.0.113.9", "turn_id": "t0"})
            r = httpx.post(server.url + "/webhook", content=body, headers={"layercode-signature": sign(body, secret)})
            assert r.status_code == 200
    landed = b"".join(p.read_bytes() for p in storage.paths.landing.rglob("*.jsonl*"))
    assert b"+15550008888" not in landed and b"203.0.113.9" not in landed
    assert phone_hash(key, "+15550008888").encode() in landed  # the same number, the same hash
    assert dg.materialize([raw_layercode_events], resources=resources).success
    ids = tmp_path / "forget.txt"
    ids.write_text("phone:+15550008888\n")
    job = build_definitions().get_job_def("forget_job")
    run_config = {"ops": {"forget_callers": {"config": {"from_file": str(ids)}}}}
    assert job.execute_in_process(run_config=run_config, resources=resources).success
    assert sessions(storage) == set()
