"""Ingest: landed segments from the real listener -> raw.layercode_events via Dagster."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import duckdb
import orjson
import pytest
from dagster._core.events import AssetObservationData

from layercode_pipeline.defs.ingest.assets import HIGH_WATER_KEY, RAW_EVENTS, raw_layercode_events
from layercode_pipeline.defs.ingest.automation import ingest_listed_at, landing_sensor
from layercode_pipeline.defs.resources import StorageResource
from layercode_pipeline.simulator import deliver, generate_batch, listener_secrets_json

from .conftest import landed_envelopes


def materialize(storage: StorageResource) -> dict:
    result = dg.materialize([raw_layercode_events], resources={"storage": storage})
    assert result.success
    (mat,) = result.asset_materializations_for_node("raw_layercode_events")
    return {k: v.value for k, v in mat.metadata.items()}


def query(storage: StorageResource, sql: str):
    con = duckdb.connect(str(storage.warehouse.path), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def land_batch(listener_factory, data_dir: Path, calls: int, seed: int, **faults) -> list[str]:
    """Deliver a simulated batch through a real listener; returns acknowledged content hashes."""
    batch = generate_batch(calls, seed=seed)
    listener = listener_factory(
        data_dir,
        env={"LAYERCODE_WEBHOOK_SECRETS": listener_secrets_json(batch), "LAYERCODE_SEGMENT_MAX_BYTES": "20000"},
    )
    report = deliver(batch, listener.url + "/agents/{agent_id}/webhook", faults=faults, concurrency=8)
    listener.stop()
    return [a.content_sha256 for a in report.acknowledged]


@pytest.fixture
def storage(tmp_path) -> StorageResource:
    return StorageResource(data_dir=str(tmp_path / "data"))


def test_first_incremental_and_empty_runs(listener_factory, storage, tmp_path):
    acked = land_batch(listener_factory, tmp_path / "data", 15, seed=1, duplicate=0.3)
    files_1 = len(list(storage.paths.landing.rglob("*.jsonl")))
    meta = materialize(storage)
    assert meta["new_files"] == files_1 > 3
    assert meta["rows_inserted"] == len(set(acked)) == meta["dagster/row_count"]
    assert meta["duplicates_dropped"] == len(acked) - len(set(acked)) > 0
    assert meta["rejects"] == 0
    assert "| received_at |" in meta["preview"]
    # the raw table's columns are typed and described in the UI, as the marts' are
    columns = {c.name: c for c in meta["dagster/column_schema"].columns}
    assert {"event_key", "body", "headers", "ingested_at"} <= set(columns)
    assert all(c.description for c in columns.values()), [n for n, c in columns.items() if not c.description]
    assert columns["received_at"].type.startswith("timestamp") and columns["body"].type == "varchar"
    assert query(storage, "select count(*) from raw.layercode_ingested_files")[0][0] == files_1

    acked_2 = land_batch(listener_factory, tmp_path / "data", 5, seed=2)
    meta = materialize(storage)
    assert meta["new_files"] == len(list(storage.paths.landing.rglob("*.jsonl"))) - files_1
    assert meta["rows_inserted"] == len(set(acked_2))
    assert meta["dagster/row_count"] == len(set(acked)) + len(set(acked_2))

    meta = materialize(storage)
    assert (meta["new_files"], meta["rows_inserted"], meta["dagster/row_count"]) == (
        0,
        0,
        len(set(acked)) + len(set(acked_2)),
    )

    rows = query(
        storage,
        """select agent_id, event_type, session_id, conversation_id, turn_id, source, body,
                                    content_sha256, source_file from raw.layercode_events""",
    )
    landed = {e["content_sha256"]: e for e in landed_envelopes(storage.paths.landing)}
    for agent_id, event_type, session_id, conversation_id, turn_id, source, body, sha, source_file in rows:
        env = landed[sha]
        parsed = orjson.loads(env["body"])
        assert (agent_id, event_type, source) == (env["agent_id"], env["event_type"], "webhook")
        assert (session_id, conversation_id, turn_id) == (
            parsed["session_id"],
            parsed.get("conversation_id"),
            parsed.get("turn_id"),
        )
        assert json.loads(body) == parsed and Path(source_file).exists()


def write_segment(landing: Path, name: str, lines: list[bytes]) -> Path:
    part = landing / "dt=2026-11-21" / "hour=10"
    part.mkdir(parents=True, exist_ok=True)
    path = part / name
    path.write_bytes(b"".join(lines))
    return path


def envelope(body: dict, received_at="2026-11-21T10:00:00.000000+00:00", agent="ag_support") -> bytes:
    import hashlib

    raw = json.dumps(body).encode()
    return (
        orjson.dumps(
            {
                "v": 1,
                "received_at": received_at,
                "agent_id": agent,
                "event_type": body["type"],
                "content_sha256": hashlib.sha256(raw).hexdigest(),
                "body": raw.decode(),
                "headers": {},
                "writer_id": "w",
                "error": None,
            }
        )
        + b"\n"
    )


END = {"type": "session.end", "session_id": "sess_a", "conversation_id": "conv_a", "duration": 1000}


def test_duplicates_by_hash_and_by_identity(storage):
    land = storage.paths.landing
    redelivered = {**END, "duration": 1000}  # same identity, re-serialised with different spacing/keys below
    write_segment(
        land,
        "w1-000001.jsonl",
        [envelope(END), envelope({"type": "message", "session_id": "sess_a", "turn_id": "t1", "text": "hi"})],
    )
    write_segment(
        land,
        "w2-000001.jsonl",
        [
            envelope(END, "2026-11-21T10:00:05.000000+00:00"),
            envelope({"duration": 1000, **redelivered}),
            envelope({"type": "user.transcript.interim_delta", "x": 1}),
            envelope({"type": "user.transcript.interim_delta", "x": 1}),
        ],
    )
    meta = materialize(storage)
    assert meta["rows_inserted"] == 3 and meta["duplicates_dropped"] == 3
    assert sorted(r[0] for r in query(storage, "select event_type from raw.layercode_events")) == [
        "message",
        "session.end",
        "user.transcript.interim_delta",
    ]
    # the first delivery wins
    assert query(storage, "select received_at::varchar from raw.layercode_events where event_type = 'session.end'")[0][
        0
    ].startswith("2026-11-21 10:00:00")


def test_event_identity_is_injective(storage):
    """Identities joined parts with `|`: session `a|b` turn `c` and session `a` turn `b|c` were one
    key, and the second event was dropped as a redelivery of the first. A redelivery of either
    still collapses."""
    land = storage.paths.landing
    one = {"type": "message", "session_id": "s|x", "turn_id": "t", "text": "one"}
    two = {"type": "message", "session_id": "s", "turn_id": "x|t", "text": "two"}
    three = {"type": "message", "session_id": "s\\", "turn_id": "x|t", "text": "three"}
    write_segment(
        land,
        "w1-000001.jsonl",
        [envelope(one), envelope(two), envelope(three), envelope({**one, "text": "one, again"})],
    )
    meta = materialize(storage)
    assert (meta["rows_inserted"], meta["duplicates_dropped"]) == (3, 1)
    assert sorted(r[0] for r in query(storage, "select body->>'text' from raw.layercode_events")) == [
        "one",
        "three",
        "two",
    ]


def test_a_data_directory_with_both_quotes_in_its_path_is_ingested(tmp_path):
    """The segment paths became SQL text through Python's repr: a path holding both ' and " made
    every segment 'unreadable' and the run green while nothing was ingested."""
    storage = StorageResource(data_dir=str(tmp_path / 'it\'s a "data" dir'))
    write_segment(
        storage.paths.landing, "w1-000001.jsonl", [envelope({**END, "session_id": f"sess_{i}"}) for i in range(5)]
    )
    meta = materialize(storage)
    assert (meta["rows_inserted"], meta.get("rejects", 0)) == (5, 0)
    assert query(storage, "select count(*) from raw.layercode_rejects") == [(0,)]


def test_warehouse_from_before_event_key_md5_is_migrated_and_still_dedupes(storage):
    """A warehouse written before raw.layercode_events.event_key_md5 existed: the column is
    added and filled when the warehouse is opened, and redeliveries of its old rows are still
    recognised."""
    land = storage.paths.landing
    message = {"type": "message", "session_id": "sess_a", "turn_id": "t1", "text": "hi"}
    write_segment(land, "w1-000001.jsonl", [envelope(END), envelope(message)])
    assert materialize(storage)["rows_inserted"] == 2
    con = duckdb.connect(str(storage.warehouse.path))
    con.execute("alter table raw.layercode_events drop column event_key_md5")
    con.close()

    write_segment(
        land,
        "w2-000001.jsonl",
        [envelope(END, "2026-11-21T10:00:09.000000+00:00"), envelope({**message, "turn_id": "t2"})],
    )
    meta = materialize(storage)
    assert (meta["rows_inserted"], meta["duplicates_dropped"], meta["dagster/row_count"]) == (1, 1, 3)
    assert query(storage, "select count(*) from raw.layercode_events where event_key_md5 = md5_number(event_key)") == [
        (3,)
    ]


def test_corrupt_lines_are_rejected_and_the_rest_ingested(storage):
    land = storage.paths.landing
    good = [envelope({**END, "session_id": f"sess_{i}"}) for i in range(4)]
    path = write_segment(
        land,
        "w1-000001.jsonl",
        [
            good[0],
            b'{"v": 1, "received_at": "2026\n',
            good[1],
            envelope({**END, "session_id": "x"})[:-30] + b"\n",
            good[2],
        ],
    )
    bad_body = (
        orjson.dumps(
            {
                "v": 1,
                "received_at": "2026-11-21T10:00:00+00:00",
                "agent_id": "a",
                "event_type": "session.end",
                "content_sha256": "00",
                "body": "{not json",
            }
        )
        + b"\n"
    )
    path2 = write_segment(land, "w1-000002.jsonl", [good[3], b"\xff\xfe garbage bytes\n", bad_body])
    meta = materialize(storage)
    assert meta["rows_inserted"] == 4 and meta["rejects"] == 4
    rejects = query(storage, "select source_file, line_number, reason from raw.layercode_rejects order by 1, 2")
    assert rejects == [
        (str(path), 2, "line is not valid JSON"),
        (str(path), 4, "line is not valid JSON"),
        (str(path2), 2, rejects[2][2]),
        (str(path2), 3, "body is not valid JSON"),
    ]
    assert "unparseable line" in rejects[2][2]
    assert materialize(storage)["rejects"] == 0  # not recorded twice


def test_unsealed_segment_waits_until_sealed(storage):
    land = storage.paths.landing
    write_segment(land, "w1-000001.jsonl", [envelope(END)])
    open_path = write_segment(land, "w2-000001.jsonl.open", [envelope({**END, "session_id": "sess_open"})])
    fd = os.open(open_path, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a live writer holds it
    try:
        meta = materialize(storage)
        assert (meta["new_files"], meta["rows_inserted"], meta["orphan_segments_sealed"]) == (1, 1, 0)
        assert open_path.exists()
    finally:
        os.close(fd)  # the writer dies: the next run seals and ingests it
    meta = materialize(storage)
    assert (meta["new_files"], meta["rows_inserted"], meta["orphan_segments_sealed"]) == (1, 1, 1)


def test_a_killed_run_leaves_no_duplicate_and_no_gap(listener_factory, storage, tmp_path):
    acked = land_batch(listener_factory, tmp_path / "data", 40, seed=3, duplicate=0.2)
    n_files = len(list(storage.paths.landing.rglob("*.jsonl")))
    script = (
        f"from pathlib import Path; from layercode_pipeline.lib.warehouse import Warehouse; "
        f"from layercode_pipeline.lib.ingest import ingest_landing\n"
        f"with Warehouse.at(Path({str(storage.warehouse.path)!r}), data_dir=Path('.')).open_for_writing() as con:\n"
        f"    while True:\n"
        f"        r = ingest_landing(con, Path({str(storage.paths.landing)!r}), batch_bytes=1, max_files=1)\n"
        f"        print(r.files, flush=True)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    committed = 0
    while committed < n_files // 2:  # each line is one committed file
        assert proc.stdout.readline().strip() == "1"
        committed += 1
    time.sleep(0.01)  # and land the kill inside whatever it is doing next
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = query(storage, "select count(*) from raw.layercode_ingested_files")[0][0]
    assert n_files // 2 <= done < n_files
    meta = materialize(storage)
    assert meta["dagster/row_count"] == len(set(acked))
    assert query(storage, "select count(*) from raw.layercode_ingested_files")[0][0] == n_files
    assert query(storage, "select count(*) - count(distinct event_key) from raw.layercode_events")[0][0] == 0


def test_landing_sensor_requests_runs_for_new_segments(storage):
    instance = dg.DagsterInstance.ephemeral()

    def tick():
        return landing_sensor(dg.build_sensor_context(resources={"storage": storage}, instance=instance))

    first = tick()  # a fresh instance: one run builds the (empty) tables and marts
    assert first.run_requests[0].tags["layercode/reason"] == "heartbeat"
    assert dg.materialize([raw_layercode_events], resources={"storage": storage}, instance=instance).success
    assert isinstance(tick(), dg.SkipReason)
    write_segment(storage.paths.landing, "w1-000001.jsonl", [envelope(END)])
    result = tick()
    assert len(result.run_requests) == 1 and result.run_requests[0].tags["layercode/reason"] == "sealed segments"
    assert len(tick().run_requests) == 1  # not ingested yet (no run happened): still asked for
    assert dg.materialize([raw_layercode_events], resources={"storage": storage}, instance=instance).success
    assert isinstance(tick(), dg.SkipReason)


def test_landing_sensor_asks_for_no_second_run_while_one_waits_for_the_warehouse(storage):
    """A started ingest run whose ingest step has not begun (it waits for the warehouse pool)
    will list what is sealed meanwhile: no other run is asked for until its ingest starts, and
    then only for what is sealed after that."""
    from layercode_pipeline.defs.ingest.automation import ingest_job

    instance = dg.DagsterInstance.ephemeral()

    def tick():
        return landing_sensor(dg.build_sensor_context(resources={"storage": storage}, instance=instance))

    done = dg.materialize([raw_layercode_events], resources={"storage": storage}, instance=instance)
    assert ingest_listed_at(instance, done.run_id) is not None  # what a real ingest says as it lists
    run = instance.add_run(dg.DagsterRun(job_name=ingest_job.name, status=dg.DagsterRunStatus.STARTED))
    write_segment(storage.paths.landing, "w1-000001.jsonl", [envelope(END)])
    skip = tick()
    assert isinstance(skip, dg.SkipReason) and "waits for the warehouse" in skip.skip_message
    # its ingest lists the landing (the asset observes itself with its high-water mark as it
    # starts): what was sealed before is its; a later segment asks for another run
    listed = dg.AssetObservation(RAW_EVENTS, metadata={HIGH_WATER_KEY: dg.MetadataValue.int(time.time_ns())})
    instance.report_dagster_event(
        dg.DagsterEvent(
            dg.DagsterEventType.ASSET_OBSERVATION.value,
            job_name=ingest_job.name,
            event_specific_data=AssetObservationData(listed),
        ),
        run.run_id,
    )
    assert isinstance(tick(), dg.SkipReason)
    time.sleep(0.01)
    write_segment(storage.paths.landing, "w1-000002.jsonl", [envelope({**END, "session_id": "sess_after"})])
    assert len(tick().run_requests) == 1


def age(directory: Path, seconds: float = 60) -> None:
    """Stand-in for time passing: the partition directory was last changed `seconds` ago."""
    old = time.time_ns() - int(seconds * 1e9)
    os.utime(directory, ns=(old, old))


def test_fully_ingested_partitions_are_not_listed_again_until_they_change(storage):
    land = storage.paths.landing
    a = write_segment(land, "w1-000001.jsonl", [envelope(END)]).parent
    b_dir = land / "dt=2026-11-21" / "hour=11"
    b_dir.mkdir(parents=True)
    (b_dir / "w1-000001.jsonl").write_bytes(envelope({**END, "session_id": "sess_b"}))
    age(a), age(b_dir)
    meta = materialize(storage)
    assert (meta["partitions_listed"], meta["rows_inserted"]) == (2, 2)
    assert materialize(storage)["partitions_listed"] == 0

    # a segment sealed late into an old partition by a slow (live: it holds the lock) writer
    late = a / "w9-000001.jsonl.open"
    late.write_bytes(envelope({**END, "session_id": "sess_late"}))
    with open(late, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        age(a)
        meta = materialize(storage)
        assert (meta["partitions_listed"], meta["rows_inserted"]) == (1, 0)
        age(a)
        assert materialize(storage)["partitions_listed"] == 1  # an open segment keeps it listed
        os.rename(late, a / "w9-000001.jsonl")
    meta = materialize(storage)
    assert (meta["partitions_listed"], meta["rows_inserted"]) == (1, 1)
    # changed moments ago: listed once more, in case another change shares its timestamp
    assert materialize(storage)["partitions_listed"] == 1
    age(a)
    meta = materialize(storage)
    assert (meta["partitions_listed"], meta["rows_inserted"], meta["dagster/row_count"]) == (1, 0, 3)
    assert materialize(storage)["partitions_listed"] == 0


def test_landing_sensor_asks_for_what_the_last_ingest_did_not_see(storage):
    instance = dg.DagsterInstance.ephemeral()

    def tick():
        return landing_sensor(dg.build_sensor_context(resources={"storage": storage}, instance=instance))

    land = storage.paths.landing
    part = write_segment(land, "w1-000001.jsonl", [envelope(END)]).parent
    assert len(tick().run_requests) == 1  # never ingested
    assert dg.materialize([raw_layercode_events], resources={"storage": storage}, instance=instance).success
    assert isinstance(tick(), dg.SkipReason)  # all of it ingested; no heartbeat due yet
    age(part, 3600)
    (part / "w2-000001.jsonl.open").write_bytes(envelope({**END, "session_id": "sess_late"}))
    assert isinstance(tick(), dg.SkipReason)  # still open: nothing to ingest yet
    os.rename(part / "w2-000001.jsonl.open", part / "w2-000001.jsonl")
    assert len(tick().run_requests) == 1  # a late seal in an old partition is seen


def test_definitions_load():
    from layercode_pipeline.definitions import build_definitions

    defs = build_definitions()
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {
        "raw_layercode_events",
        "layercode_session_details",
        "layercode_recordings",
        "session_enrichments",
        "marts/fct_sessions",
        "marts/fct_turns",
        "marts/fct_conversations",
        "marts/agg_daily_call_metrics",
        "analytics_serving",
    } <= keys
    # one lineage: the marts sit downstream of the raw events, and dbt tests are asset checks
    upstream = graph.get(dg.AssetKey(["marts", "fct_sessions"])).parent_keys
    assert dg.AssetKey(["staging", "stg_webhook_events"]) in upstream  # valid events only
    assert dg.AssetKey("raw_layercode_events") in graph.get(dg.AssetKey(["staging", "stg_webhook_events"])).parent_keys
    checked = {k.asset_key.to_user_string() for k in graph.asset_check_keys}
    assert {"marts/fct_sessions", "marts/fct_turns", "raw_layercode_events"} <= checked
    assert defs.get_sensor_def("landing_sensor") and defs.get_sensor_def("layercode_automation")
    # the REST assets run hourly by their automation condition; all downstream follows eagerly
    assert graph.get(dg.AssetKey("layercode_session_details")).automation_condition.get_label() == "hourly at :17"
    assert graph.get(dg.AssetKey("analytics_serving")).automation_condition.get_label() == "eager"
    assert graph.get(dg.AssetKey(["marts", "fct_sessions"])).freshness_policy is not None
    assert graph.get(dg.AssetKey("raw_layercode_events")).freshness_policy is not None
    # no dbt test is a check on a Python asset (that would run dbt in every ingest run)
    assert not {
        k
        for k in graph.asset_check_keys
        if k.asset_key.to_user_string() == "raw_layercode_events" and k.name.startswith(("unique", "not_null"))
    }
    # every check says what it checks (dbt's generic tests in words, a singular test's comment)
    described = {k.name: graph.get_check_spec(k).description for k in graph.asset_check_keys}
    assert [name for name, text in described.items() if not text] == []
    assert described["not_null_fct_sessions_session_id"].startswith("`session_id` is never null.")
    assert "clears by itself after the next REST probe" in described["warn_latency_looks_like_seconds"]
    assert "A warning: it never fails a run." in described["warn_latency_looks_like_seconds"]
    # the raw events' columns are shown before the first run, described
    raw = graph.get(dg.AssetKey("raw_layercode_events")).metadata["dagster/column_schema"]
    assert {c.name for c in raw.columns} >= {"event_type", "session_id", "body"}
    assert all(c.description for c in raw.columns)


def test_parallel_writers_queue_instead_of_failing(storage):
    """A second pipeline writer (another run, the backfill CLI) waits for the first."""
    storage.warehouse.path.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; from pathlib import Path; from layercode_pipeline.lib.warehouse import Warehouse\n"
                f"with Warehouse.at(Path({str(storage.warehouse.path)!r}), data_dir=Path('.')).open_for_writing() as con:\n"
                "    con.execute('create table if not exists raw.marker(x int)'); print('holding', flush=True); time.sleep(2)\n"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "holding"
    started = time.monotonic()
    write_segment(storage.paths.landing, "w1-000001.jsonl", [envelope(END)])
    meta = materialize(storage)  # would fail with DuckDB's lock error without the writer lock
    waited = time.monotonic() - started
    holder.wait(30)
    assert holder.returncode == 0 and meta["rows_inserted"] == 1
    assert waited > 0.5  # it queued behind the holder


def drift_check(storage: StorageResource) -> dg.AssetCheckEvaluation:
    result = dg.materialize([raw_layercode_events], resources={"storage": storage})
    (check,) = [c for c in result.get_asset_check_evaluations() if c.check_name == "no_payload_drift"]
    return check


def test_payload_drift_is_reported_with_examples(listener_factory, storage, tmp_path):
    # what the simulator sends (every event type, custom metadata, interruption context, data
    # events) is what the contract describes: no drift
    land_batch(listener_factory, tmp_path / "data", 12, seed=8)
    check = drift_check(storage)
    assert check.passed, check.metadata["new_in_payloads"].value
    # Layercode ships a new field, a number where text was, and a new event type
    write_segment(
        storage.paths.landing,
        "w7-000001.jsonl",
        [
            envelope({**END, "session_id": "sess_drift", "sentiment_hint": "calm"}),
            envelope(
                {
                    "type": "message",
                    "session_id": "sess_drift",
                    "turn_id": "t1",
                    "text": "hi",
                    "interruption_context": {"previous_turn_interrupted": True, "words_heard": "four"},
                }
            ),
            envelope({"type": "call.transferred", "session_id": "sess_drift", "to": "+15550100"}),
        ],
    )
    check = drift_check(storage)
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    found = {
        (d["event_type"], d["path"], d["kind"], d["json_type"]): d for d in check.metadata["new_in_payloads"].value
    }
    assert set(found) == {
        ("session.end", "sentiment_hint", "unknown_field", "string"),
        ("message", "interruption_context.words_heard", "unexpected_type", "string"),
        ("call.transferred", "type", "unknown_event_type", "string"),
    }
    assert all(d["example_sessions"] == ["sess_drift"] and d["events"] == 1 for d in found.values())
    assert check.metadata["events_with_drift"].value == 3
    assert drift_check(storage).passed  # a check on this run's payloads: nothing new landed since
