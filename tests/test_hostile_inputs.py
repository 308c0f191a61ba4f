"""Results that cannot stall, inputs that cannot stop a stage, secrets no other user can reach
(issue 48). Each case is the hostile input itself, against the real part: a second local user
(root drops to `nobody` in a child process), a 1 MB word, a segment of 500 `session.end`
events, endpoints that trickle or inflate their answers, WAV headers that lie."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import orjson
import pytest

from layercode_pipeline.config import ResultEndpoint, build_environment
from layercode_pipeline.contract.landing import build_envelope, header_allow_list
from layercode_pipeline.defs.dbt import warm
from layercode_pipeline.defs.ingest.assets import raw_layercode_events
from layercode_pipeline.defs.resources import StorageResource
from layercode_pipeline.lib.result_webhooks.delivery import Dispatcher
from layercode_pipeline.lib.result_webhooks.messages import CALL_ANALYZED, Message
from layercode_pipeline.lib.result_webhooks.outbox import Outbox
from layercode_pipeline.simulator import generate_batch, write_segment
from layercode_pipeline.simulator.receiver import ResultReceiver
from layercode_pipeline.simulator.server import BackgroundServer

NOBODY = 65534
# the second user's programs need only the standard library: the system's Python, which any
# user may run (the project's virtualenv may sit in a directory only its owner enters)
SYSTEM_PYTHON = "/usr/bin/python3"
as_root_only = pytest.mark.skipif(
    os.geteuid() != 0 or not os.access(SYSTEM_PYTHON, os.X_OK),
    reason="acting as a second local user needs root and the system's python3",
)


def as_nobody() -> None:
    os.setgid(NOBODY)
    os.setuid(NOBODY)


@pytest.fixture
def shared_tmp(monkeypatch):
    """A temp directory shared by every local user, as /tmp is (sticky, world-writable)."""
    tmp = Path(tempfile.mkdtemp(prefix="shared-", dir="/tmp"))
    tmp.chmod(0o1777)
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    yield tmp
    shutil.rmtree(tmp, ignore_errors=True)


SQUATTER = """
import os, socket, sys
directory, name, out = sys.argv[1:4]
os.makedirs(directory, exist_ok=True)
os.chmod(directory, 0o777)
path = os.path.join(directory, name)
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(path)
os.chmod(path, 0o777)
server.listen(4)
server.settimeout(30)
print("listening", flush=True)
try:
    conn, _ = server.accept()
    conn.settimeout(5)
    data = conn.recv(1 << 20)
    open(out, "wb").write(data)
except OSError:
    pass
"""


@as_root_only
def test_a_second_local_user_squatting_the_socket_gets_nothing(tmp_path, shared_tmp):
    home = tmp_path / "data" / "dbt"
    (home / "run").mkdir(parents=True)
    received = shared_tmp / "received"
    directory = shared_tmp / f"layercode-{os.getuid()}"
    squatter = subprocess.Popen(
        [SYSTEM_PYTHON, "-c", SQUATTER, str(directory), warm.socket_name(home), str(received)],
        preexec_fn=as_nobody,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert squatter.stdout is not None and squatter.stdout.readline().strip() == "listening"
        env = {
            **os.environ,
            "TMPDIR": str(shared_tmp),
            "DBT_TARGET_PATH": str(home / "run"),
            "LAYERCODE_API_KEY": "sk_secret_never_shared",
        }
        # the pipeline's dbt step: the client refuses a directory it does not own alone, and
        # runs the real dbt itself
        run = subprocess.run(
            [sys.executable, "-m", "layercode_pipeline.defs.dbt.warm", "--version"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        assert warm.ensure_warm_dbt(str(home / "run"), idle_s=5) is None  # nor is a warm dbt started there
    finally:
        squatter.kill()
        squatter.wait()
    assert not received.exists() or b"sk_secret" not in received.read_bytes()
    assert not received.exists()


@as_root_only
def test_a_second_local_user_cannot_reach_the_warm_dbt(tmp_path, shared_tmp):
    state = tmp_path / "data" / "dbt" / "run"
    pid = warm.ensure_warm_dbt(str(state), idle_s=3)
    assert pid is not None
    path = warm.socket_path(state.parent)
    info = path.parent.stat()
    assert info.st_uid == os.getuid() and info.st_mode & 0o777 == 0o700
    probe = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
        "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    print('refused')\nelse:\n    print('connected')\n"
    )
    out = subprocess.run(
        [SYSTEM_PYTHON, "-c", probe, str(path)], preexec_fn=as_nobody, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.strip() == "refused", out.stderr


def test_a_build_is_handed_no_secret(monkeypatch):
    for name in ("LAYERCODE_API_KEY", "OPENAI_API_KEY", "LAYERCODE_PRIVACY_KEY", "LAYERCODE_WEBHOOK_SECRETS"):
        monkeypatch.setenv(name, "secret-value")
    monkeypatch.setenv("MOTHERDUCK_TOKEN", "md-token")
    monkeypatch.setenv("DBT_TARGET_PATH", "/somewhere")
    env = build_environment()
    assert "secret-value" not in env.values() and "md-token" not in env.values()
    assert env["DBT_TARGET_PATH"] == "/somewhere" and "PATH" in env
    assert build_environment(motherduck=True)["MOTHERDUCK_TOKEN"] == "md-token"


def test_credential_like_headers_are_never_landed_whatever_the_pattern():
    keep = header_allow_list(["x-*", "user-agent"])
    for name in ("x-pwd", "x-pass", "x-user-pin", "x-otp", "x-api-key", "x-auth-token", "x-client-secret", "x-sig"):
        assert not keep(name.encode()), name
    for name in ("x-tenant-id", "x-request-source", "x-design", "user-agent"):
        assert keep(name.encode()), name


REDACT_1MB = """
import sys, time
from layercode_pipeline.lib.enrichment.redact import redact
word = "A1b2" * 262144  # a reference read out digit by digit, a base64 blob: one 1 MB word
out = redact("my reference is " + word + " and my email is ana.ruiz@example.com")
assert out.endswith("and my email is [EMAIL]"), out[-80:]
assert word in out
print("ok")
"""


def test_redaction_of_a_one_megabyte_word_is_linear():
    """A quadratic pattern spends about 10^12 steps on a 1 MB word (hours); a linear one, a
    fraction of a second. The bound: the same process must finish redacting it at all within a
    minute, on a loaded machine, which only a linear (or near-linear) pattern does."""
    run = subprocess.run([sys.executable, "-c", REDACT_1MB], capture_output=True, text=True, timeout=120)
    assert run.stdout.strip() == "ok", run.stderr


# --- one bad input never stops a stage ------------------------------------------------------


def landed_line(body: bytes, *, received_at: datetime | None = None, agent_id: str = "ag_h") -> bytes:
    return build_envelope(
        received_at=received_at or datetime.now(UTC),
        agent_id=agent_id,
        event_type=orjson.loads(body)["type"] if body.count(b"{") < 500 else "session.start",
        content_sha256=hashlib.sha256(body).hexdigest(),
        body=body,
        headers={},
        writer_id="whostile",
    )


def test_a_thousand_deep_custom_metadata_is_named_and_the_ingest_goes_on(tmp_path):
    storage = StorageResource(data_dir=str(tmp_path / "data"))
    part = storage.paths.landing / "dt=2026-11-20" / "hour=09"
    part.mkdir(parents=True)
    deep = '{"a":' * 1000 + "{}" + "}" * 1000
    bodies = [
        f'{{"type":"session.start","session_id":"s_deep","agent_id":"ag_h","custom_metadata":{deep}}}'.encode(),
        b'{"type":"session.start","session_id":"s_fine","agent_id":"ag_h"}',
    ]
    (part / "w-000001.jsonl").write_bytes(b"".join(landed_line(b) for b in bodies))
    result = dg.materialize([raw_layercode_events], resources={"storage": storage})
    assert result.success
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    drift = checks["no_payload_drift"].metadata["new_in_payloads"].value
    assert any(d["kind"] == "nested_too_deep" and d["example_sessions"] == ["s_deep"] for d in drift), drift
    con = duckdb.connect(str(storage.warehouse.path), read_only=True)
    try:
        assert {r[0] for r in con.execute("select session_id from raw.layercode_events").fetchall()} == {
            "s_deep",
            "s_fine",
        }
    finally:
        con.close()


def wait_for_analyzed(receiver: ResultReceiver, n: int, timeout_s: float = 60.0) -> int:
    deadline = time.monotonic() + timeout_s
    while len(receiver.unique(CALL_ANALYZED)) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return len(receiver.unique(CALL_ANALYZED))


def test_a_segment_of_500_session_ends_is_done_in_one_round(express):
    now = datetime.now(UTC).replace(microsecond=0)
    batch = generate_batch(500, seed=48, base_time=now - timedelta(hours=1))
    write_segment(express["storage"].paths.landing, batch, received_at=now, name="w1-000001")
    n = len(batch.sessions)
    summary = express["tick"]()
    assert f"{n} session.end read, {n} call.analyzed recorded" in summary, summary
    assert "0 session.end read" in express["tick"]()  # the mark moved past the whole segment
    assert wait_for_analyzed(express["receiver"], n) == n


def test_a_session_end_without_a_utc_offset_does_not_stop_the_express_path(express):
    now = datetime.now(UTC).replace(microsecond=0)
    batch = generate_batch(4, seed=49, base_time=now - timedelta(hours=1))
    path = express["storage"].paths.landing / f"dt={now:%Y-%m-%d}" / f"hour={now:%H}" / "w1-000001.jsonl"
    write_segment(express["storage"].paths.landing, batch, received_at=now, name="w1-000001")
    lines = path.read_bytes().splitlines(keepends=True)
    naive = []
    for line in lines:  # every started_at without its offset, as a naive platform clock might send it
        env = orjson.loads(line)
        body = orjson.loads(env["body"])
        if "started_at" in body:
            body["started_at"] = body["started_at"][:19]
        env["body"] = orjson.dumps(body).decode()
        naive.append(orjson.dumps(env) + b"\n")
    path.write_bytes(b"".join(naive))
    n = len(batch.sessions)
    for _ in range(2):  # and it does so on every tick, not once
        summary = express["tick"]()
    assert wait_for_analyzed(express["receiver"], n) == n, summary


def test_an_endpoint_added_later_gets_only_what_is_analysed_from_then_on(tmp_path):
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    first = ResultEndpoint("http://127.0.0.1:9/first", (b"k" * 24,))
    later = ResultEndpoint("http://127.0.0.1:9/later", (b"k" * 24,))
    old = Message.build(CALL_ANALYZED, ("sess_1", "k1"), {"session_id": "sess_1", "agent_id": "ag"})
    assert outbox.enqueue([old], [first]) == 1
    # the same message built again (a segment rewritten by forget, read again by the express
    # path), now that a second endpoint is configured: the new endpoint does not get the past
    assert outbox.enqueue([old], [first, later]) == 0
    new = Message.build(CALL_ANALYZED, ("sess_2", "k1"), {"session_id": "sess_2", "agent_id": "ag"})
    assert outbox.enqueue([new], [first, later]) == 2
    assert {(d["message_id"], d["endpoint_url"]) for d in outbox.deliveries()} == {
        (old.id, first.url),
        (new.id, first.url),
        (new.id, later.url),
    }


def test_a_corrected_transcript_says_which_analysis_it_replaces(tmp_path):
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    endpoint = ResultEndpoint("http://127.0.0.1:9/hook", (b"k" * 24,))
    first = Message.build(CALL_ANALYZED, ("sess_1", "transcript-a"), {"session_id": "sess_1", "agent_id": "ag"})
    second = Message.build(CALL_ANALYZED, ("sess_1", "transcript-b"), {"session_id": "sess_1", "agent_id": "ag"})
    outbox.enqueue([first], [endpoint])
    outbox.enqueue([second], [endpoint])
    bodies = {d.message_id: orjson.loads(d.body) for d in outbox.claim_due(endpoint.url, time.time() + 1, 10, 30)}
    assert "replaces" not in bodies[first.id]["data"]
    assert bodies[second.id]["data"]["replaces"] == first.id


class TricklingEndpoint:
    """An HTTP endpoint that answers its status line, then one header byte every 0.2 s (each
    read well inside a per-read timeout), for `trickle_s`; it counts requests in flight."""

    def __init__(self, trickle_s: float):
        self.trickle_s = trickle_s
        self.requests = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self._lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/hook"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with self._lock:
            self.requests += 1
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            end = time.monotonic() + self.trickle_s
            while time.monotonic() < end:
                conn.sendall(b"a")
                time.sleep(0.2)
            conn.sendall(b"\r\nContent-Length: 0\r\n\r\n")
        except OSError:
            pass
        finally:
            conn.close()
            with self._lock:
                self.in_flight -= 1

    def close(self) -> None:
        self.server.close()


def test_a_slow_endpoint_never_gets_the_same_message_twice_at_once(tmp_path):
    """The attempt's timeout is a deadline for the whole attempt: an endpoint that trickles its
    answer past the delivery's lease is cut off at the deadline, so a second worker (the sensor
    and a run deliver from the same outbox) never claims the message while it is in flight."""
    endpoint_server = TricklingEndpoint(trickle_s=9.0)
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    endpoint = ResultEndpoint(endpoint_server.url, (b"k" * 24,))
    message = Message.build(CALL_ANALYZED, ("sess_1", "k1"), {"session_id": "sess_1", "agent_id": "ag"})
    outbox.enqueue([message], [endpoint])
    workers = [Dispatcher(outbox, [endpoint], timeout_s=1.0, schedule_s=(600,), batch=1) for _ in range(2)]
    stop = time.monotonic() + 8.0  # past the lease (batch x timeout + 5 s)
    try:

        def keep_delivering(dispatcher: Dispatcher) -> None:
            while time.monotonic() < stop:
                dispatcher.run_round(wait_s=None)
                time.sleep(0.1)

        threads = [threading.Thread(target=keep_delivering, args=(w,)) for w in workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for w in workers:
            w.close()
        endpoint_server.close()
    assert endpoint_server.most_in_flight == 1 and endpoint_server.requests == 1
    [delivery] = outbox.deliveries()
    assert delivery["status"] == "pending" and "timeout after 1 s" in delivery["last_error"]


def test_an_endpoints_gzip_answer_costs_no_memory(tmp_path):
    """The answer's body is never read: a gzip body that inflates to 256 MiB costs nothing."""
    import tracemalloc

    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    from layercode_pipeline.simulator.api import gzip_bomb

    bomb = gzip_bomb()

    async def answer(request):
        await request.body()
        return Response(bomb, 200, headers={"content-encoding": "gzip", "content-type": "application/json"})

    app = Starlette(routes=[Route("/hook", answer, methods=["POST"])])
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    with BackgroundServer(app) as server:
        endpoint = ResultEndpoint(server.url + "/hook", (b"k" * 24,))
        message = Message.build(CALL_ANALYZED, ("sess_1", "k1"), {"session_id": "sess_1", "agent_id": "ag"})
        outbox.enqueue([message], [endpoint])
        tracemalloc.start()
        try:
            with Dispatcher(outbox, [endpoint], timeout_s=10) as dispatcher:
                stats = dispatcher.run_until_idle()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert stats.delivered == 1
    assert peak < 16 * 1024 * 1024, f"peak {peak / 2**20:.0f} MiB"


def test_deliveries_list_hides_nothing(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from layercode_pipeline.cli import main

    data = tmp_path / "data"
    monkeypatch.setenv("LAYERCODE_DATA_DIR", str(data))
    endpoint = ResultEndpoint("http://127.0.0.1:9/a-rather-long-endpoint-path/for/results", (b"k" * 24,))
    monkeypatch.setenv(
        "LAYERCODE_RESULT_WEBHOOKS", json.dumps([{"url": endpoint.url, "secret": "whsec_" + "A" * 43 + "="}])
    )
    outbox = Outbox(data / "outbox" / "result_webhooks.sqlite3")
    messages = [
        Message.build(
            CALL_ANALYZED,
            (f"session-with-a-long-identifier-{i:04d}", "k"),
            {"session_id": f"session-with-a-long-identifier-{i:04d}"},
        )
        for i in range(120)
    ]
    outbox.enqueue(messages, [endpoint])
    runner = CliRunner()
    out = runner.invoke(main, ["deliveries", "list", "--json"], env={"COLUMNS": "80"})
    assert out.exit_code == 0, out.output
    assert len(out.output.splitlines()) == 120  # every row, not 50
    assert len(runner.invoke(main, ["deliveries", "list", "--json", "--limit", "7"]).output.splitlines()) == 7
    table = runner.invoke(main, ["deliveries", "list"], env={"COLUMNS": "80"}).output
    shown = [m for m in messages if m.id in table]
    assert len(shown) == 50 and all(m.session_id in table for m in shown)  # whole ids, never cut
    assert "(70 more; --limit to see them)" in table


# --- the audio checks: bounded memory, bounded time --------------------------------------------


def write_wav(path: Path, seconds: float, rate: int) -> Path:
    import numpy as np

    from layercode_pipeline.lib.wav import wav_header

    frames = int(seconds * rate)
    samples = (np.sin(np.arange(frames) * 0.05) * 8000).astype("<i2").tobytes()
    path.write_bytes(wav_header(len(samples), rate) + samples)
    return path


def test_the_audio_checks_decode_in_bounded_blocks(tmp_path):
    """A 384 kHz file of 16 MiB: its blocks were 10 s of audio (3.84M frames: about 5 times
    the file in float arrays); now at most MAX_BLOCK_FRAMES, whatever the header's rate."""
    import tracemalloc

    from layercode_pipeline.lib.audio import analyse_wav
    from layercode_pipeline.lib.wav import inspect_wav

    path = write_wav(tmp_path / "fast.wav", seconds=22, rate=384_000)
    size = path.stat().st_size
    info = inspect_wav(path)
    tracemalloc.start()
    try:
        stats = analyse_wav(path, info)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stats.duration_s == 22.0
    assert peak < size / 2, f"peak {peak / 2**20:.1f} MiB for a {size / 2**20:.1f} MiB file"


def test_the_audio_checks_stop_at_their_deadline(tmp_path):
    from layercode_pipeline.lib.audio import MeasureTimeout, analyse_wav
    from layercode_pipeline.lib.wav import inspect_wav

    path = write_wav(tmp_path / "long.wav", seconds=60, rate=8000)
    with pytest.raises(MeasureTimeout):
        analyse_wav(path, inspect_wav(path), deadline_s=0.0)
    assert analyse_wav(path, inspect_wav(path)).duration_s == 60.0  # within the default deadline
