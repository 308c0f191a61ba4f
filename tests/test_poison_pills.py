"""No poison pills (issue 12): one bad event, line, segment or session never stops the pipeline.

Each case goes through the real parts: signed webhooks to the listener under uvicorn, sealed
segments on disk, Dagster materialisations of every asset with `dbt build`, and the serving
copy. The run that meets the bad input refreshes the marts and the serving copy, and the next
run with good data is unaffected.
"""

from __future__ import annotations

import hashlib
import json
import resource
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import duckdb
import httpx
import orjson
import pytest

from layercode_pipeline.config import Settings
from layercode_pipeline.contract.landing import build_envelope
from layercode_pipeline.contract.signing import sign
from layercode_pipeline.defs.ingest.assets import raw_layercode_events
from layercode_pipeline.defs.resources import StorageResource
from layercode_pipeline.demo import materialize_all
from layercode_pipeline.simulator import SimulatorAPI, deliver, generate_batch, listener_secrets_json
from layercode_pipeline.simulator.server import BackgroundServer
from webhook_listener.app import create_app

from .conftest import SECRET

API_KEY = "sk_poison"
LONG_TURNS = 50_000


def signed_post(url: str, body: bytes, secret: str) -> httpx.Response:
    return httpx.post(
        url,
        content=body,
        headers={"layercode-signature": sign(body, secret), "content-type": "application/json"},
        timeout=30,
    )


def long_session_end(agent_id: str) -> dict:
    start_ms = int(time.time() * 1000) - 3_600_000
    return {
        "type": "session.end",
        "session_id": "long_call",
        "conversation_id": "long_conv",
        "agent_id": agent_id,
        "started_at": "2026-11-20T09:00:00.000Z",
        "ended_at": "2026-11-20T10:00:00.000Z",
        "duration": 3_600_000,
        "transcript": [
            {"role": "user" if i % 2 else "assistant", "text": f"turn {i}", "timestamp": start_ms + i * 50}
            for i in range(LONG_TURNS)
        ],
    }


def odd_session_end(agent_id: str) -> dict:
    """Numbers no measurement has, timestamps out of any range, a role nobody documented."""
    return {
        "type": "session.end",
        "session_id": "odd_numbers",
        "conversation_id": "odd_conv",
        "agent_id": agent_id,
        "started_at": "2026-11-20T10:00:00.000Z",
        "ended_at": "2026-11-20T09:59:00.000Z",  # ends before it starts
        "duration": -5,
        "latency": 1e300,
        "transcription_duration_seconds": 1e308,
        "tts_duration_seconds": -1,
        "transcript": [
            {"role": "system", "text": "prompt", "timestamp": 1e300},
            {"role": "user", "text": "hello there", "timestamp": -99999999999999},
            {"text": "no role"},
            {"role": "tool", "timestamp": None},
            {"role": "assistant", "text": None, "timestamp": "yesterday"},
        ],
    }


def segment_lines(landing: Path) -> list[bytes]:
    return [line for seg in sorted(landing.rglob("*.jsonl")) for line in seg.read_bytes().splitlines() if line]


def serving(data: Path, sql: str, params: list | None = None) -> list[tuple]:
    con = duckdb.connect(str(data / "serving" / "analytics.duckdb"), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def warehouse(data: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(data / "warehouse.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory):
    """A good batch plus every poison pill, landed through the real listener and by hand, then
    one full materialisation."""
    data = tmp_path_factory.mktemp("poison") / "data"
    batch = generate_batch(12, seed=512)
    agent = batch.agents[0]
    api = SimulatorAPI(api_key=API_KEY, seed=1)
    api.register(batch, ready_in_s=0)
    serving = api.serve()
    api_server = serving.__enter__()
    settings = Settings(data_dir=data, webhook_secrets=listener_secrets_json(batch), segment_max_age_s=60.0)
    listener = BackgroundServer(create_app(settings)).start()
    url = listener.url + f"/agents/{agent.agent_id}/webhook"
    report = deliver(batch, listener.url + "/agents/{agent_id}/webhook", faults={}, concurrency=8)
    assert report.failed == 0
    answers = {
        # 1. a 50,000-turn session.end: accepted (under the 10 MiB limit)
        "long": signed_post(url, orjson.dumps(long_session_end(agent.agent_id)), agent.secret),
        "odd": signed_post(url, orjson.dumps(odd_session_end(agent.agent_id)), agent.secret),
        # 6. identifiers of the wrong type: kept with a validation error (422), never in the marts
        "number_id": signed_post(
            url, orjson.dumps({"type": "message", "session_id": 42, "turn_id": "t1", "text": "x"}), agent.secret
        ),
        "object_id": signed_post(url, orjson.dumps({"type": "session.end", "session_id": {"id": "s"}}), agent.secret),
        # shapes no model accepts: kept with their validation error, never in the marts
        "bad_shapes": signed_post(
            url,
            orjson.dumps(
                {
                    **odd_session_end(agent.agent_id),
                    "session_id": "bad_shapes",
                    "metadata": "not an object",
                    "transcript": ["a bare string", 42],
                }
            ),
            agent.secret,
        ),
    }
    listener.stop()  # seals the open segment
    assert len(orjson.dumps(long_session_end(agent.agent_id))) < settings.max_body_bytes
    assert {k: r.status_code for k, r in answers.items()} == {
        "long": 200,
        "odd": 200,
        "number_id": 422,
        "object_id": 422,
        "bad_shapes": 422,
    }

    # 2. segments that reached the landing area from other writers: an empty line, CRLF line
    # endings, a file mixing both, bytes that are not UTF-8, a NUL, a torn last line
    good = segment_lines(data / "landing")
    part = data / "landing" / "dt=2026-11-20" / "hour=23"
    part.mkdir(parents=True)
    (part / "restored-empty-line.jsonl").write_bytes(good[0] + b"\n\n" + good[1] + b"\n")
    (part / "copied-crlf.jsonl").write_bytes(b"\r\n".join(good[2:5]) + b"\r\n")
    (part / "mixed.jsonl").write_bytes(good[5] + b"\r\n" + good[6] + b"\n\r\n" + good[7] + b"\n")
    (part / "garbage.jsonl").write_bytes(b"\xff\xfe not utf-8\n" + good[8] + b'\n\x00\x01\x02\n{"torn": ')
    result = materialize_all(data, api_url=api_server.url + "/v1", api_key=API_KEY, grace_minutes=0)
    yield {"data": data, "batch": batch, "api_url": api_server.url + "/v1", "agent": agent, "metadata": result}
    serving.__exit__(None, None, None)


def test_the_run_that_met_every_poison_pill_refreshed_the_marts_and_the_serving_copy(poisoned):
    data, batch = poisoned["data"], poisoned["batch"]
    sessions = {r[0] for r in serving(data, "select session_id from marts.fct_sessions")}
    assert {s.session_id for s in batch.sessions} | {"long_call", "odd_numbers"} == sessions
    # the long transcript: every turn, in order, with unique keys
    turns = serving(
        data,
        "select count(*), count(distinct turn_key), min(position), max(position) "
        "from marts.fct_turns where session_id = 'long_call'",
    )
    assert turns == [(LONG_TURNS, LONG_TURNS, 1, LONG_TURNS)]
    assert serving(data, "select turns, user_turns from marts.fct_sessions where session_id = 'long_call'") == [
        (LONG_TURNS, LONG_TURNS // 2)
    ]
    assert serving(data, "select count(*) from marts.agg_daily_call_metrics") != [(0,)]


def test_absurd_numbers_timestamps_and_roles_are_set_aside_not_fatal(poisoned):
    data = poisoned["data"]
    [row] = serving(
        data,
        "select duration_ms, latency_ms, transcription_duration_seconds, tts_duration_seconds, "
        "turns from marts.fct_sessions where session_id = 'odd_numbers'",
    )
    assert row == (None, None, None, None, 5)
    roles = serving(
        data, "select role, spoken_at from marts.fct_turns where session_id = 'odd_numbers' order by position"
    )
    assert [r[0] for r in roles] == ["unknown", "user", "unknown", "unknown", "assistant"]
    assert all(r[1] is None for r in roles)  # 1e300, a negative epoch and "yesterday" are no timestamps


def test_events_with_identifiers_of_the_wrong_type_stay_in_raw_out_of_the_marts(poisoned):
    data = poisoned["data"]
    kept = warehouse(
        data,
        "select event_type, session_id, validation_error is not null from raw.layercode_events "
        "where validation_error is not null order by 1, 2 nulls last",
    )
    assert kept == [("message", None, True), ("session.end", "bad_shapes", True), ("session.end", None, True)]
    assert serving(
        data, "select count(*) from marts.fct_sessions where session_id in ('42', '{\"id\":\"s\"}', 'bad_shapes')"
    ) == [(0,)]


def test_bad_lines_are_rejects_with_file_and_line_and_the_good_lines_are_kept(poisoned):
    data, meta = poisoned["data"], poisoned["metadata"]
    rejects = warehouse(
        data,
        "select regexp_extract(source_file, '[^/]+$'), line_number, reason from raw.layercode_rejects order by 1, 2",
    )
    assert [(f, n) for f, n, _ in rejects] == [("garbage.jsonl", 1), ("garbage.jsonl", 3), ("garbage.jsonl", 4)]
    assert all(reason for _, _, reason in rejects)
    # the copied lines are redeliveries of landed events: counted once, nothing lost
    files = dict(
        warehouse(
            data,
            "select regexp_extract(path, '[^/]+$'), rows from raw.layercode_ingested_files "
            "where path like '%dt=2026-11-20/hour=23%'",
        )
    )
    assert files == {"restored-empty-line.jsonl": 2, "copied-crlf.jsonl": 3, "mixed.jsonl": 3, "garbage.jsonl": 4}
    assert meta["raw_layercode_events"]["rejects"] == 3


def test_warning_checks_name_what_was_set_aside_and_describe_the_run(poisoned):
    data = poisoned["data"]
    storage = {"storage": StorageResource(data_dir=str(data))}
    body = orjson.dumps({"type": "message", "session_id": 7, "turn_id": "t"})
    invalid = build_envelope(
        received_at=datetime.now(UTC),
        agent_id="ag",
        event_type="message",
        content_sha256=hashlib.sha256(body).hexdigest(),
        body=body,
        headers={},
        writer_id="restored",
        error="session_id: Input should be a valid string",
    )
    part = data / "landing" / "dt=2026-11-20" / "hour=22"
    part.mkdir(parents=True)
    (part / "restored-bad.jsonl").write_bytes(invalid + b"not an envelope\n")
    result = dg.materialize([raw_layercode_events], resources=storage)
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    for name, count_key in (("no_rejected_lines", "rejects"), ("no_invalid_events", "invalid_events")):
        check = checks[name]
        assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN, name
        assert check.metadata[count_key].value == 1 and check.metadata["examples"].value, name
    assert "restored-bad.jsonl:2" in str(checks["no_rejected_lines"].metadata["examples"].value)
    # a run with nothing new: both pass again (they describe the run, not the history)
    result = dg.materialize([raw_layercode_events], resources=storage)
    assert all(c.passed for c in result.get_asset_check_evaluations())


def test_next_run_with_good_data_is_unaffected(poisoned):
    data = poisoned["data"]
    batch = generate_batch(5, seed=513)
    settings = Settings(data_dir=data, webhook_secrets=listener_secrets_json(batch))
    with BackgroundServer(create_app(settings)) as listener:
        report = deliver(batch, listener.url + "/agents/{agent_id}/webhook", faults={}, concurrency=8)
    assert report.failed == 0
    materialize_all(data, api_url=poisoned["api_url"], api_key=API_KEY, grace_minutes=60)
    sessions = {r[0] for r in serving(data, "select session_id from marts.fct_sessions")}
    assert {s.session_id for s in batch.sessions} <= sessions and "long_call" in sessions
    assert serving(data, "select count(*) from marts.fct_turns where session_id = 'long_call'") == [(LONG_TURNS,)]


# --- 3. a process outside the pipeline holding warehouse.duckdb --------------------------------

HOLD = """
import duckdb, sys, time
path, mode = sys.argv[1], sys.argv[2]
if mode == "hold":
    con = duckdb.connect(path)
    print("ready", flush=True)
    time.sleep(600)
print("ready", flush=True)
while True:  # a BI tool that polls: open, read, close, every 0.5 s
    try:
        con = duckdb.connect(path, read_only=True)
        con.execute("select 1").fetchall()
        time.sleep(0.2)
        con.close()
    except duckdb.Error:
        pass
    time.sleep(0.5)
"""


def start_holder(path: Path, mode: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path), mode], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_a_bi_tool_holding_the_warehouse_fails_the_run_after_a_bounded_wait_naming_it(tmp_path):
    storage = StorageResource(data_dir=str(tmp_path / "data"), open_timeout_s=2.0)
    with storage.connect():
        pass  # the warehouse exists
    holder = start_holder(storage.warehouse.path, "hold")
    try:
        started = time.monotonic()
        result = dg.materialize([raw_layercode_events], resources={"storage": storage}, raise_on_error=False)
        waited = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    assert not result.success and waited >= 2.0
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = str(failure.event_specific_data.error)
    assert f"PID {holder.pid}" in message and "serving/analytics.duckdb" in message
    assert "read-only mode" not in message  # DuckDB's hint sends users the wrong way


def test_a_bi_tool_that_opens_and_closes_the_warehouse_never_fails_a_run(tmp_path):
    data = tmp_path / "data"
    batch = generate_batch(4, seed=99)
    settings = Settings(data_dir=data, webhook_secrets=listener_secrets_json(batch))
    with BackgroundServer(create_app(settings)) as listener:
        deliver(batch, listener.url + "/agents/{agent_id}/webhook", faults={}, concurrency=4)
    with StorageResource(data_dir=str(data)).connect():
        pass
    poller = start_holder(data / "warehouse.duckdb", "poll")
    try:
        materialize_all(data, api_url=None, api_key=None, grace_minutes=60)
    finally:
        poller.kill()
        poller.wait()
    assert serving(data, "select count(*) from marts.fct_sessions") == [(len(batch.sessions),)]


# --- 4, 5, 6. the listener: slow clients, a full disk, invalid UTF-8 ----------------------------


def test_slow_clients_are_cut_off_and_healthy_deliveries_go_through(listener_factory):
    def few_descriptors():
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    listener = listener_factory(
        env={"LAYERCODE_HEADER_TIMEOUT_S": "2", "LAYERCODE_BODY_TIMEOUT_S": "2"}, preexec_fn=few_descriptors
    )
    slow: list[socket.socket] = []
    for i in range(300):  # more than the listener has descriptors
        s = socket.create_connection(("127.0.0.1", listener.port))
        s.sendall(
            b"POST /webhook HTTP/1.1\r\nhost: x\r\n"
            if i % 2
            else b'POST /webhook HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n{"type"'
        )  # slow body
        slow.append(s)
    body = json.dumps({"type": "session.end", "session_id": "healthy"}).encode()
    deadline = time.monotonic() + 30  # a liveness bound, not a speed target
    status = None
    while status != 200 and time.monotonic() < deadline:
        try:
            status = signed_post(listener.url + "/webhook", body, SECRET).status_code
        except httpx.HTTPError:
            time.sleep(0.2)
    assert status == 200
    answers = set()
    for s in slow:
        s.settimeout(10)
        try:
            answers.add(s.recv(200).split(b"\r\n")[0] or b"closed")
        except ConnectionResetError:  # closed with our unread bytes in its buffer: cut off too
            answers.add(b"closed")
        except TimeoutError:
            answers.add(b"still open")
        s.close()
    assert answers <= {b"HTTP/1.1 408 Request Timeout", b"closed"}, answers
    assert b"HTTP/1.1 408 Request Timeout" in answers


def test_full_disk_errors_are_logged_at_a_bounded_rate_with_a_count(listener_factory):
    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1500, 1500))

    listener = listener_factory(preexec_fn=limit_file_size)
    statuses = [
        signed_post(
            listener.url + "/webhook",
            json.dumps({"type": "session.end", "session_id": f"s{i}", "pad": "p" * 2000}).encode(),
            SECRET,
        ).status_code
        for i in range(40)
    ]
    assert statuses == [503] * 40
    health = httpx.get(listener.url + "/healthz").json()
    assert health["failed_writes"] == 40
    out = listener.stop()
    errors = [line for line in out.splitlines() if "landing write failed" in line]
    assert len(errors) == 1 and "1 events answered 503" in errors[0]


def test_a_quarantine_write_cut_short_is_answered_503_and_leaves_nothing(listener_factory, tmp_path):
    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1500, 1500))

    listener = listener_factory(preexec_fn=limit_file_size)
    small = signed_post(listener.url + "/webhook", b"not json", SECRET)
    large = signed_post(listener.url + "/webhook", b"not json " + b"x" * 5000, SECRET)  # the body file is cut short
    assert (small.status_code, large.status_code) == (400, 503)
    files = sorted((tmp_path / "data" / "quarantine").rglob("*.*"))
    bodies = [f for f in files if f.suffix == ".body"]
    assert len(files) == 2 and [b.read_bytes() for b in bodies] == [b"not json"]  # only the small one's pair


def test_invalid_utf8_is_named_as_such(listener_factory):
    listener = listener_factory()
    r = signed_post(listener.url + "/webhook", b'{"type": "message", "text": "caf\xe9"}', SECRET)
    assert r.status_code == 400
    assert "not UTF-8 (byte 0xe9 at offset 32)" in r.json()["detail"] and "surrogates" not in r.json()["detail"]
