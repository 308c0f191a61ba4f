"""The express result path (issue 26): `call.analyzed` straight from the landing, before any
run touches the warehouse, saying what the warehouse path would say, sent once, and paid once.

Real parts: segments as the listener seals them, the sensor as the daemon calls it, the
offline provider, a receiver verifying every delivery with the `standardwebhooks` package,
then the pipeline's own assets (ingest, enrichment, dbt, result_webhooks) on the same data.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import dagster as dg
import duckdb
import orjson

from layercode_pipeline.contract.events import event_key
from layercode_pipeline.contract.landing import OPEN_SUFFIX
from layercode_pipeline.defs.dbt.assets import dbt_resource, layercode_dbt_models
from layercode_pipeline.defs.enrichment.assets import session_enrichments
from layercode_pipeline.defs.ingest.assets import raw_layercode_events
from layercode_pipeline.defs.resources import OpenAIResource, ResultWebhooksResource, StorageResource
from layercode_pipeline.defs.results.assets import result_webhooks
from layercode_pipeline.defs.results.automation import result_webhooks_sensor
from layercode_pipeline.lib.result_webhooks.messages import CALL_ANALYZED, session_facts
from layercode_pipeline.lib.result_webhooks.signing import new_secret
from layercode_pipeline.simulator import generate_batch, write_segment
from layercode_pipeline.simulator.receiver import ResultReceiver
from layercode_pipeline.simulator.server import BackgroundServer


def tick(resources: dict) -> str:
    with dg.instance_for_test() as instance:
        result = result_webhooks_sensor(dg.build_sensor_context(instance=instance, resources=resources))
    assert isinstance(result, dg.SkipReason)
    return result.skip_message or ""


def wait_for(receiver: ResultReceiver, n: int, timeout_s: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while len(receiver.unique(CALL_ANALYZED)) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return receiver.unique(CALL_ANALYZED)


def test_express_sends_what_the_warehouse_path_would_once_and_the_run_reuses_its_answers(tmp_path):
    data = tmp_path / "data"
    storage = StorageResource(data_dir=str(data))
    secret = new_secret()
    receiver = ResultReceiver(secret)
    now = datetime.now(UTC).replace(microsecond=0)
    with BackgroundServer(receiver.app) as server:
        config = json.dumps([{"url": server.url + "/", "secret": secret}])
        hooks = ResultWebhooksResource(endpoints_json=config, outbox_path=str(data / "outbox.sqlite3"))
        resources = {"result_webhooks": hooks, "storage": storage, "openai": OpenAIResource()}
        assert "express: 0 session.end read" in tick(resources)  # the first tick starts from now
        batch = generate_batch(6, seed=26, base_time=now - timedelta(hours=3))
        write_segment(storage.paths.landing, batch, received_at=now, name="w1-000001")
        n = len(batch.sessions)  # calls, and their reconnects
        # a writer still holding a segment opened before these calls ended: they wait for it
        held = next(storage.paths.landing.rglob("*.jsonl")).with_name("w2-000001" + OPEN_SUFFIX)
        held.write_bytes(orjson.dumps({"received_at": (now - timedelta(minutes=1)).isoformat()}) + b"\n")
        assert f"{n} waiting for an open segment" in tick(resources)
        assert not receiver.unique(CALL_ANALYZED)
        held.unlink()
        summary = tick(resources)
        assert f"{n} session.end read, {n} call.analyzed recorded" in summary, summary
        express = wait_for(receiver, n)
    assert len(express) == n and receiver.rejected == 0
    assert {r.session_id for r in express.values()} == {s.session_id for s in batch.sessions}

    # the warehouse path on the same data, as the ingest run executes it
    run = dg.materialize(
        [raw_layercode_events, session_enrichments, layercode_dbt_models],
        resources={"storage": storage, "dbt": dbt_resource(), "openai": OpenAIResource()},
    )
    assert run.success
    enriched = {k: v.value for k, v in run.asset_materializations_for_node("session_enrichments")[0].metadata.items()}
    assert (enriched["llm_calls"], enriched["cached"], enriched["enriched"]) == (0, n, 0)  # the answers, taken over
    with BackgroundServer(receiver.app, port=int(server.url.rsplit(":", 1)[1].split("/")[0])):
        sent = dg.materialize([result_webhooks], resources={"storage": storage, "result_webhooks": hooks})
    assert sent.success
    meta = {k: v.value for k, v in sent.asset_materializations_for_node("result_webhooks")[0].metadata.items()}
    assert meta["call_analyzed_built"] == n and meta["messages_enqueued"] == 0  # the same messages
    con = duckdb.connect(str(storage.warehouse.path), read_only=True)
    try:
        facts = session_facts(con, sorted(r.session_id for r in express.values()))
        analyses = {
            r[0]: r[1:]
            for r in con.execute(
                "select session_id, summary, sentiment, outcome, provider, input_tokens from enrichment.session_enrichments"
            ).fetchall()
        }
        # the Python identity of an event is the ingest's
        keys = {r[0] for r in con.execute("select event_key from raw.layercode_events").fetchall()}
    finally:
        con.close()
    for received in express.values():
        data = dict(received.body["data"])
        analysis = data.pop("analysis")
        assert data == facts[received.session_id]  # every fact as the warehouse path states it
        assert (analysis["summary"], analysis["sentiment"], analysis["outcome"], analysis["provider"]) == analyses[
            received.session_id
        ][:4]
    landed = [
        orjson.loads(line) for f in storage.paths.landing.rglob("*.jsonl") for line in f.read_bytes().splitlines()
    ]
    assert {
        event_key(e["agent_id"], e["event_type"], e["content_sha256"], orjson.loads(e["body"])) for e in landed
    } == keys
