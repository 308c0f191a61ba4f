"""The webhook listener over real HTTP: uvicorn on loopback, httpx and httpx-sse clients."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import resource
import signal
import threading
import time
from pathlib import Path

import httpx
import orjson
import pytest
from httpx_sse import connect_sse

from layercode_pipeline.config import Settings
from layercode_pipeline.contract.signing import sign
from layercode_pipeline.simulator.server import BackgroundServer
from webhook_listener.app import create_app

from .conftest import SECRET, landed_envelopes


def make_settings(tmp_path: Path, **overrides) -> Settings:
    values = {"data_dir": tmp_path / "data", "webhook_secret": SECRET, "segment_max_age_s": 60.0, **overrides}
    return Settings(**values)


@pytest.fixture
def served(tmp_path):
    """A listener app under real uvicorn in this process; yields (url, settings, stop)."""
    servers = []

    def start(**kwargs):
        responder = kwargs.pop("responder", None)
        settings = make_settings(tmp_path, **kwargs)
        server = BackgroundServer(create_app(settings, responder=responder)).start()
        servers.append(server)
        return server.url, settings, server.stop

    yield start
    for s in servers:
        s.stop()


def post(
    url: str,
    payload: dict | bytes,
    secret: str = SECRET,
    ts: int | None = None,
    path: str = "/webhook",
    headers: dict | None = None,
) -> httpx.Response:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    h = {"layercode-signature": sign(body, secret, ts), "content-type": "application/json", **(headers or {})}
    return httpx.post(url + path, content=body, headers=h, timeout=10)


START = {"type": "session.start", "session_id": "sess_1", "conversation_id": "conv_1", "turn_id": "turn_w"}
MESSAGE = {
    "type": "message",
    "session_id": "sess_1",
    "conversation_id": "conv_1",
    "turn_id": "turn_2",
    "text": "Where is my order? 📦",
}
END = {
    "type": "session.end",
    "session_id": "sess_1",
    "conversation_id": "conv_1",
    "agent_id": "ag",
    "duration": 1000,
    "transcript": [{"role": "user", "text": "hi", "timestamp": "2026-11-21T10:00:00Z"}],
}
UPDATE = {
    "type": "session.update",
    "session_id": "sess_1",
    "recording_status": "completed",
    "recording_url": "https://x/rec.wav",
    "recording_duration": 12.5,
}


def test_sse_reply_for_session_start_and_message(served):
    url, settings, stop = served()
    for event in (START, MESSAGE):
        body = json.dumps(event).encode()
        headers = {"layercode-signature": sign(body, SECRET), "content-type": "application/json"}
        with (
            httpx.Client() as client,
            connect_sse(client, "POST", url + "/webhook", content=body, headers=headers) as es,
        ):
            assert es.response.status_code == 200
            assert es.response.headers["content-type"].startswith("text/event-stream")
            assert es.response.headers["cache-control"] == "no-cache, no-transform"
            events = [json.loads(sse.data) for sse in es.iter_sse()]
        assert events[-1] == {"type": "response.end", "turn_id": event["turn_id"]}
        assert all(e["turn_id"] == event["turn_id"] for e in events)
        assert [e["type"] for e in events[:-1]] == ["response.tts"] * (len(events) - 1)
        expected = settings.welcome_message if event is START else settings.ack_message
        assert " ".join(e["content"] for e in events[:-1]) == expected
    stop()
    landed = landed_envelopes(settings.paths.landing)
    assert [e["event_type"] for e in landed] == ["session.start", "message"]


def test_landed_bytes_equal_sent_bytes_for_every_type(served):
    url, settings, stop = served()
    unknown = {"type": "user.transcript.interim_delta", "session_id": "sess_1", "delta": "wh"}
    # odd spacing, key order and unicode escapes: the raw bytes, not a re-serialisation, are kept
    bodies = [
        b'{ "type":"session.end" ,"session_id":"sess_1","text":"caf\\u00e9", "duration": null}',
        json.dumps(UPDATE).encode(),
        json.dumps(unknown, ensure_ascii=False).encode(),
        json.dumps(START).encode(),
    ]
    for body in bodies:
        r = post(url, body)
        assert r.status_code == 200, r.text
    assert post(url, bodies[0]).json() == {"status": "ok", "type": "session.end"}
    stop()
    landed = landed_envelopes(settings.paths.landing)
    assert [e["body"].encode() for e in landed] == bodies + [bodies[0]]
    for e, body in zip(landed, bodies):
        assert e["content_sha256"] == hashlib.sha256(body).hexdigest()
        assert e["agent_id"] == "default"
        assert "layercode-signature" not in e["headers"]
        assert SECRET not in json.dumps(e)
    assert landed[2]["event_type"] == "user.transcript.interim_delta"


@pytest.mark.parametrize(
    "case,reason",
    [
        ("missing", "missing_signature"),
        ("malformed", "malformed_signature"),
        ("stale", "stale_timestamp"),
        ("wrong_secret", "invalid_signature"),
        ("tampered", "invalid_signature"),
        ("reserialised", "invalid_signature"),
    ],
)
def test_bad_signatures_get_401_and_nothing_lands(served, case, reason):
    url, settings, stop = served()
    body = b'{"type": "session.end", "session_id": "sess_1"}'
    header = sign(body, SECRET)
    if case == "missing":
        headers = {}
    elif case == "malformed":
        headers = {"layercode-signature": "sha256=" + header}
    elif case == "stale":
        headers = {"layercode-signature": sign(body, SECRET, int(time.time()) - 301)}
    elif case == "wrong_secret":
        headers = {"layercode-signature": sign(body, "not-the-secret")}
    elif case == "tampered":
        headers = {"layercode-signature": header}
        body = body.replace(b"sess_1", b"sess_2")
    else:  # same JSON value, different bytes
        headers = {"layercode-signature": header}
        body = json.dumps(json.loads(body), separators=(",", ":")).encode()
    r = httpx.post(url + "/webhook", content=body, headers=headers)
    assert r.status_code == 401
    assert r.json()["error"] == reason
    stop()
    assert landed_envelopes(settings.paths.landing) == []
    assert not settings.paths.quarantine.exists()


def test_per_agent_route_with_rotated_secrets(served):
    url, settings, stop = served(webhook_secrets=json.dumps({"ag_sales": ["old_secret", "new_secret"]}))
    for secret in ("old_secret", "new_secret"):
        assert post(url, END, secret=secret, path="/agents/ag_sales/webhook").status_code == 200
    r = post(url, END, secret=SECRET, path="/agents/ag_sales/webhook")
    assert r.status_code == 401 and r.json()["error"] == "invalid_signature"
    r = post(url, END, secret=SECRET, path="/agents/ag_unknown/webhook")
    assert r.status_code == 401 and r.json()["error"] == "unknown_agent"
    stop()
    assert [e["agent_id"] for e in landed_envelopes(settings.paths.landing)] == ["ag_sales", "ag_sales"]


def test_invalid_json_is_quarantined_with_400(served):
    url, settings, stop = served()
    for bad in (b'{"type": "session.end", "session_id": ', b"[1, 2, 3]", b'{"no_type": true}', b"\xff\xfe"):
        r = post(url, bad)
        assert r.status_code == 400 and r.json()["error"] == "invalid_json"
    stop()
    assert landed_envelopes(settings.paths.landing) == []
    kept = sorted(p.read_bytes() for p in settings.paths.quarantine.rglob("*.body"))
    assert kept == sorted([b'{"type": "session.end", "session_id": ', b"[1, 2, 3]", b'{"no_type": true}', b"\xff\xfe"])
    metas = [json.loads(p.read_text()) for p in settings.paths.quarantine.rglob("*.meta.json")]
    assert all(m["reason"].startswith("invalid JSON") for m in metas)


def test_known_type_missing_required_field_is_kept_and_answered_422(served):
    url, settings, stop = served()
    r = post(url, {"type": "message", "session_id": "sess_1", "text": "no turn id"})
    assert r.status_code == 422
    assert "turn_id" in r.json()["detail"]
    stop()
    (env,) = landed_envelopes(settings.paths.landing)
    assert env["event_type"] == "message" and "turn_id" in env["error"]


def test_odd_field_values_are_tolerated(served):
    url, settings, stop = served()
    odd = {
        **END,
        "duration": None,
        "latency": None,
        "country_code": None,
        "extra_field": {"nested": [1]},
        "transcript": [
            {"role": "assistant", "text": None, "timestamp": 1795167017476},
            {"role": "user", "text": "ok", "timestamp": "2026-11-21T10:00:00.123Z"},
        ],
    }
    assert post(url, odd).status_code == 200
    stop()
    assert len(landed_envelopes(settings.paths.landing)) == 1


def test_oversized_bodies_get_413(served):
    url, settings, stop = served(max_body_bytes=1024)
    big = json.dumps({**END, "padding": "x" * 5000}).encode()
    r = post(url, big)
    assert r.status_code == 413 and r.json()["error"] == "body_too_large"

    def chunks():  # no Content-Length: refused while streaming, not after reading it all
        yield big[:600]
        yield big[600:]

    r = httpx.post(url + "/webhook", content=chunks(), headers={"layercode-signature": sign(big, SECRET)})
    assert r.status_code == 413
    stop()
    assert landed_envelopes(settings.paths.landing) == []


def test_failing_responder_sends_response_error_then_end(served):
    def broken(event, settings):
        yield "Let me check"
        raise RuntimeError("database is down")

    url, settings, stop = served(responder=broken)
    body = json.dumps(MESSAGE).encode()
    with (
        httpx.Client() as client,
        connect_sse(
            client, "POST", url + "/webhook", content=body, headers={"layercode-signature": sign(body, SECRET)}
        ) as es,
    ):
        events = [json.loads(s.data) for s in es.iter_sse()]
    assert [e["type"] for e in events] == ["response.tts", "response.error", "response.end"]
    assert "database is down" not in events[1]["error"]  # internals stay in our logs
    stop()
    assert len(landed_envelopes(settings.paths.landing)) == 1


def test_async_responder_with_data(served):
    from webhook_listener.responder import Data

    async def responder(event, settings):
        yield Data({"order": 123})
        yield "Found it."

    url, settings, stop = served(responder=responder)
    body = json.dumps(MESSAGE).encode()
    with (
        httpx.Client() as client,
        connect_sse(
            client, "POST", url + "/webhook", content=body, headers={"layercode-signature": sign(body, SECRET)}
        ) as es,
    ):
        events = [json.loads(s.data) for s in es.iter_sse()]
    assert events == [
        {"type": "response.data", "content": {"order": 123}, "turn_id": "turn_2"},
        {"type": "response.tts", "content": "Found it.", "turn_id": "turn_2"},
        {"type": "response.end", "turn_id": "turn_2"},
    ]


def test_segments_rotate_by_size_and_are_sealed(served):
    url, settings, stop = served(segment_max_bytes=2000)
    for i in range(20):
        assert post(url, {**END, "session_id": f"sess_{i}"}).status_code == 200
    seg_dir = next(settings.paths.landing.glob("dt=*/hour=*"))
    assert len(list(seg_dir.glob("*.jsonl"))) > 3
    stop()
    assert not list(settings.paths.landing.rglob("*.open"))
    assert sorted(orjson.loads(e["body"])["session_id"] for e in landed_envelopes(settings.paths.landing)) == sorted(
        f"sess_{i}" for i in range(20)
    )


def test_segment_sealed_by_age_without_traffic(served):
    url, settings, stop = served(segment_max_age_s=0.3)
    assert post(url, END).status_code == 200
    deadline = time.monotonic() + 10
    while not list(settings.paths.landing.rglob("*.jsonl")):
        assert time.monotonic() < deadline, "segment was never sealed by age"
        time.sleep(0.05)
    assert not list(settings.paths.landing.rglob("*.open"))
    stop()


def test_refuses_to_start_without_secret(tmp_path):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("LAYERCODE_")}
    env["LAYERCODE_DATA_DIR"] = str(tmp_path)
    r = subprocess.run(
        [sys.executable, "-m", "layercode_pipeline.cli", "listen", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0 and "no webhook secret configured" in r.stderr


def test_insecure_mode_warns_and_accepts_unsigned(listener_factory, tmp_path):
    listener = listener_factory(
        env={"LAYERCODE_WEBHOOK_SECRET": "", "LAYERCODE_LOG_LEVEL": "INFO"}, args=("--insecure-skip-verify",)
    )
    r = httpx.post(listener.url + "/webhook", content=json.dumps(END).encode())
    assert r.status_code == 200
    out = listener.stop()
    assert "signature verification is disabled" in out.lower()


def test_access_log_has_no_secret_or_body(listener_factory):
    listener = listener_factory(env={"LAYERCODE_LOG_LEVEL": "INFO"})
    assert post(listener.url, MESSAGE).status_code == 200
    assert post(listener.url, END, secret="wrong").status_code == 401
    out = listener.stop()
    lines = [json.loads(line) for line in out.splitlines() if line.startswith('{"ts":')]
    assert [(entry["type"], entry["status"]) for entry in lines] == [("message", 200), (None, 401)]
    assert SECRET not in out and "Where is my order" not in out


def test_disk_write_failure_answers_503_and_lands_nothing_partial(listener_factory, tmp_path):
    """A real write error (RLIMIT_FSIZE -> EFBIG, as a full disk would give ENOSPC)."""

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1500, 1500))

    listener = listener_factory(preexec_fn=limit_file_size)
    statuses = [post(listener.url, {**END, "session_id": f"sess_{i}", "pad": "p" * 200}).status_code for i in range(12)]
    assert 200 in statuses and 503 in statuses
    ok = {f"sess_{i}" for i, s in enumerate(statuses) if s == 200}
    listener.stop(signal.SIGKILL)
    landed = landed_envelopes(tmp_path / "data" / "landing")
    assert {orjson.loads(e["body"])["session_id"] for e in landed} == ok


def test_two_listener_processes_share_a_directory(listener_factory, tmp_path):
    a, b = listener_factory(), listener_factory()
    sent = []

    def load(listener, prefix):
        for i in range(60):
            sid = f"{prefix}_{i}"
            assert post(listener.url, {**END, "session_id": sid}).status_code == 200
            sent.append(sid)

    threads = [threading.Thread(target=load, args=(p, n)) for p, n in ((a, "a"), (b, "b"))]
    [t.start() for t in threads]
    [t.join() for t in threads]
    a.stop()
    b.stop()
    landed = landed_envelopes(tmp_path / "data" / "landing")
    assert sorted(orjson.loads(e["body"])["session_id"] for e in landed) == sorted(sent)
    assert len({e["writer_id"] for e in landed}) == 2


def test_sigkill_under_load_loses_no_acknowledged_event(listener_factory, tmp_path):
    listener = listener_factory()
    acked: list[str] = []
    stop_at = time.monotonic() + 1.5

    async def worker(n: int) -> None:
        async with httpx.AsyncClient(timeout=5) as client:
            i = 0
            while time.monotonic() < stop_at + 5:
                sid = f"w{n}_{i}"
                body = json.dumps({**END, "session_id": sid}).encode()
                try:
                    r = await client.post(
                        listener.url + "/webhook", content=body, headers={"layercode-signature": sign(body, SECRET)}
                    )
                except httpx.HTTPError:
                    return  # the listener is gone
                if r.status_code == 200:
                    acked.append(sid)
                i += 1

    async def main():
        tasks = [asyncio.create_task(worker(n)) for n in range(16)]
        await asyncio.sleep(1.5)
        listener.proc.send_signal(signal.SIGKILL)
        await asyncio.gather(*tasks)

    asyncio.run(main())
    assert len(acked) > 100
    assert list((tmp_path / "data" / "landing").rglob("*.open")), "expected an unsealed segment after SIGKILL"
    landed = {orjson.loads(e["body"])["session_id"] for e in landed_envelopes(tmp_path / "data" / "landing")}
    assert set(acked) <= landed
    assert not list((tmp_path / "data" / "landing").rglob("*.open"))


@pytest.mark.parametrize("inline_sync_below_s,threaded", [(float("inf"), False), (0.0, True)])
def test_group_commit_on_the_loop_and_in_a_thread(tmp_path, inline_sync_below_s, threaded):
    """Both places a group can be synced: every line lands once, whole, in far fewer fsyncs."""
    from datetime import UTC, datetime

    from webhook_listener.lander import SegmentLander

    async def run() -> SegmentLander:
        lander = SegmentLander(tmp_path / "landing", inline_sync_below_s=inline_sync_below_s)
        await lander.start()
        now = datetime.now(UTC)
        await asyncio.gather(*(lander.land(b'{"n": %d}\n' % i, now) for i in range(300)))
        await lander.close()
        return lander

    lander = asyncio.run(run())
    lines = [line for p in sorted((tmp_path / "landing").rglob("*.jsonl")) for line in p.read_bytes().splitlines()]
    assert sorted(orjson.loads(line)["n"] for line in lines) == list(range(300))
    assert lander.landed == 300 and lander.groups < 30
    assert (lander.threaded_groups == lander.groups) is threaded and (lander.threaded_groups == 0) is not threaded
    assert not list((tmp_path / "landing").rglob("*.open"))
