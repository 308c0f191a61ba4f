"""The simulator: determinism, contract shapes, REST faults, delivery against the listener."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from layercode_pipeline.contract.events import RestSession, SessionEndEvent, SessionUpdateEvent
from layercode_pipeline.lib.wav import read_wav_info
from layercode_pipeline.simulator import (
    SimulatorAPI,
    default_agents,
    deliver,
    generate_batch,
    listener_secrets_json,
    parse_fault_specs,
)
from layercode_pipeline.simulator.server import BackgroundServer

from .conftest import landed_envelopes

KEY = "sim_test_key"


def test_same_seed_same_batch_different_seed_different_batch():
    a, b, c = generate_batch(30, seed=5), generate_batch(30, seed=5), generate_batch(30, seed=6)
    assert json.dumps(a.manifest()) == json.dumps(b.manifest())
    assert [s.session_end() for s in a.sessions] == [s.session_end() for s in b.sessions]
    assert a.manifest()["sessions"] != c.manifest()["sessions"]


def test_batch_is_realistic():
    batch = generate_batch(300, seed=1)
    m = batch.manifest()
    sessions = m["sessions"]
    assert len(m["conversations"]) == 300 and len(sessions) > 300  # some reconnects
    assert any(c["sessions"] > 1 for c in m["conversations"])
    assert {s["channel"] for s in sessions} == {"phone", "web"}
    assert all((s["from_phone_number"] is None) == (s["channel"] == "web") for s in sessions)
    assert {s["scenario"] for s in sessions} >= {
        "order_status",
        "billing_dispute",
        "appointment_booking",
        "cancellation",
        "named_caller",
        "angry_caller",
        "happy_caller",
        "short_call",
        "multilingual",
    }
    assert any("😊" in t for s in sessions for _, t in s["turn_texts"])
    assert len({s["agent_id"] for s in sessions}) == 4
    assert {s["barge_ins_observable"] for s in sessions} == {True, False}  # one agent is hosted (agent.llm)
    assert {s["recording_state"] for s in sessions} == {"completed", "failed", "disabled"}
    assert len({s["country_code"] for s in sessions}) > 3
    durations = sorted(s["duration_ms"] for s in sessions)
    assert durations[0] < 7000 < durations[len(durations) // 2] < durations[-1]


def test_payload_shapes_follow_the_contract():
    batch = generate_batch(20, seed=2)
    s = next(x for x in batch.sessions if x.recording_outcome == "completed" and x.from_phone_number)
    end = SessionEndEvent.model_validate(s.session_end())
    assert end.duration == s.duration_ms and end.recording_status == "enabled"
    assert all(isinstance(t.timestamp, int) for t in end.transcript)
    update = SessionUpdateEvent.model_validate(s.session_update())
    assert update.recording_status == "completed" and update.recording_url
    rest = s.rest_record(recording_ready=True)
    RestSession.model_validate(rest)
    assert "duration" not in rest and rest["duration_ms"] == s.duration_ms and rest["latency_ms"] == s.latency_ms
    assert rest["recording_status"] == "completed" and rest["from_phone_country"]
    assert all(set(e) == {"timestamp", "user_message", "assistant_message", "latency_ms"} for e in rest["transcript"])
    assert all(isinstance(e["timestamp"], str) for e in rest["transcript"])
    # an exchange splits into user then assistant turns: same texts as the webhook transcript
    flattened = [t for e in rest["transcript"] for t in (e["user_message"], e["assistant_message"]) if t]
    assert flattened == [t["text"] for t in s.session_end()["transcript"]]
    assert s.rest_record(recording_ready=False)["recording_status"] == "in_progress"
    web = next(x for x in batch.sessions if not x.from_phone_number)
    assert "from_phone_number" not in web.session_end() and "from_phone_number" not in web.rest_record(True)


def test_signature_verifies_with_independent_implementation():
    captured: list[tuple[bytes, str]] = []

    async def capture(request: Request):
        captured.append((await request.body(), request.headers["layercode-signature"]))
        return JSONResponse({"ok": True})

    batch = generate_batch(3, seed=4)
    with BackgroundServer(Starlette(routes=[Route("/agents/{agent_id}/webhook", capture, methods=["POST"])])) as srv:
        report = deliver(batch, srv.url + "/agents/{agent_id}/webhook")
    assert len(captured) == report.sent > 0
    secrets = {a.secret for a in batch.agents}
    for body, header in captured:
        parts = dict(p.split("=", 1) for p in header.split(","))
        assert any(
            hmac.compare_digest(
                parts["v1"], hmac.new(s.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256).hexdigest()
            )
            for s in secrets
        )


@pytest.fixture
def api_server():
    batch = generate_batch(25, seed=9)
    api = SimulatorAPI(api_key=KEY, seed=1, processing_delay_s=3600, retry_after_s=2, slow_s=0.5)
    api.register(batch)
    with api.serve() as srv:
        yield batch, api, srv.url + "/v1"


def get(url: str, key: str = KEY, follow: bool = True) -> httpx.Response:
    return httpx.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=10, follow_redirects=follow)


def test_rest_details_auth_and_404(api_server):
    batch, api, base = api_server
    s = batch.sessions[0]
    r = get(f"{base}/agents/{s.agent_id}/sessions/{s.session_id}")
    assert r.status_code == 200 and r.json() == json.loads(json.dumps(s.rest_record(recording_ready=False)))
    assert "conversation_id" not in r.json()  # contract section 5: the REST record has none
    assert get(f"{base}/agents/{s.agent_id}/sessions/{s.session_id}", key="wrong").status_code == 401
    assert httpx.get(f"{base}/agents/{s.agent_id}/sessions/{s.session_id}").status_code == 400  # no bearer token
    assert get(f"{base}/agents/{s.agent_id}/sessions/sess_nope").status_code == 404
    assert get(f"{base}/agents/ag_other/sessions/{s.session_id}").status_code == 404


def test_recording_not_ready_then_ready_is_a_valid_wav(api_server):
    batch, api, base = api_server
    s = next(x for x in batch.sessions if x.recording_outcome == "completed")
    url = f"{base}/agents/{s.agent_id}/sessions/{s.session_id}/recording"
    r = get(url)
    assert r.status_code == 202 and r.json()["recording_status"] == "in_progress"
    api.make_ready(s.session_id)
    redirect = get(url, follow=False)
    assert redirect.status_code == 302
    storage = redirect.headers["location"]
    assert httpx.URL(storage).host != httpx.URL(url).host  # signed storage is another host
    # it refuses a request that still carries the API key, and an unsigned one
    assert get(storage).status_code == 400
    assert httpx.get(storage.split("?")[0]).status_code == 403
    r = get(url)  # httpx drops Authorization on a redirect to another origin
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    info = read_wav_info(io.BytesIO(r.content), len(r.content))
    assert (info.sample_rate, info.channels, info.bits_per_sample) == (
        s.sample_rate,
        1,
        8 * s.recording_bytes_per_sample,
    )
    assert info.duration_s == pytest.approx(s.duration_ms / 1000, abs=0.001)
    assert get(f"{base}/agents/{s.agent_id}/sessions/{s.session_id}").json()["recording_status"] == "completed"
    failed = next(x for x in batch.sessions if x.recording_outcome != "completed")
    assert get(f"{base}/agents/{failed.agent_id}/sessions/{failed.session_id}/recording").status_code == 404


def test_scripted_faults(api_server):
    batch, api, base = api_server
    s = next(x for x in batch.sessions if x.recording_outcome == "completed")
    api.make_ready(s.session_id)
    details = f"{base}/agents/{s.agent_id}/sessions/{s.session_id}"
    api.script(s.session_id, "rate_limit", "rate_limit_bare", "payment_required", "server_error", "ok", "truncated_wav")
    r = get(details)
    assert r.status_code == 429 and r.headers["retry-after"] == "2"
    r = get(details)
    assert r.status_code == 429 and "retry-after" not in r.headers
    assert get(details).status_code == 402
    assert get(details).status_code == 500
    assert get(details).status_code == 200
    # the storage host's body ends early while Content-Length claims it all: the client sees it
    with pytest.raises(httpx.RemoteProtocolError):
        get(details + "/recording")
    api.script(s.session_id, "slow")
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(details, headers={"Authorization": f"Bearer {KEY}"}, timeout=0.1)


def test_fault_specs_are_checked():
    assert parse_fault_specs(["duplicate=0.5", "rate_limit=0.1"]) == {"duplicate": 0.5, "rate_limit": 0.1}
    for bad in ("duplicate", "nonsense=0.1", "duplicate=2"):
        with pytest.raises(ValueError):
            parse_fault_specs([bad])


def test_delivery_against_the_real_listener(listener_factory, tmp_path):
    batch = generate_batch(40, seed=11)
    listener = listener_factory(
        env={
            "LAYERCODE_WEBHOOK_SECRETS": listener_secrets_json(batch),
            # the customer's custom headers are kept only when named
            "LAYERCODE_KEPT_HEADERS": '["user-agent", "x-tenant-id", "x-request-source"]',
        }
    )
    faults = {"duplicate": 0.2, "out_of_order": 0.5, "drop_session_end": 0.1, "drop_session_update": 0.1, "burst": 0.3}
    report = deliver(batch, listener.url + "/agents/{agent_id}/webhook", faults=faults, concurrency=16)
    listener.stop()
    # every SSE reply is read to its end, except those a barge-in tore down mid-stream
    assert report.failed == 0 and report.sse_torn > 0
    assert report.sse_complete + report.sse_torn == report.sse_replies
    assert {(a.session_id, a.turn_id) for a in report.log if a.sse_torn} == {
        (s.session_id, t) for s in batch.sessions for t in s.torn_replies()
    }
    assert {e for _, e in report.dropped} == {"session.end", "session.update"}
    landed = landed_envelopes(tmp_path / "data" / "landing")
    acked = sorted(a.content_sha256 for a in report.acknowledged)
    assert sorted(e["content_sha256"] for e in landed) == acked
    assert len(acked) > len(set(acked))  # duplicates were delivered (and landed as delivered)
    sent_ids = {s.session_id for s in batch.sessions}
    assert {orjson.loads(e["body"])["session_id"] for e in landed} == sent_ids
    # the customer's custom headers reach the landed envelope; the signature never does
    by_session = {s.session_id: s.headers for s in batch.sessions}
    for e in landed:
        sid = orjson.loads(e["body"])["session_id"]
        assert {k: v for k, v in e["headers"].items() if k.startswith("x-")} == by_session[sid]
        assert "layercode-signature" not in e["headers"]


def test_the_simulator_is_as_hard_as_the_platform():
    """Contract section 5, case by case, in one seeded batch."""
    batch = generate_batch(120, seed=21)
    sessions = batch.sessions
    ids = [x for s in sessions for x in (s.session_id, s.conversation_id, *(t.turn_id for t in s.turns))]
    assert all(re.fullmatch(r"[a-z0-9]{24}", x) for x in ids)  # production-shaped, no prefixes
    assert all(re.fullmatch(r"[a-z0-9]{8}", a.agent_id) for a in batch.agents)
    assert all("conversation_id" not in s.rest_record(True) for s in sessions)
    fields = {s.agent.metadata_field for s in sessions}
    assert fields == {"custom_metadata", "metadata", "both"}
    legacy = next(s for s in sessions if s.agent.metadata_field == "metadata")
    assert "custom_metadata" not in legacy.session_start() and legacy.session_start()["metadata"] == legacy.metadata
    assert all("metadata" not in m and "custom_metadata" not in m for m in legacy.messages())
    both = next(s for s in sessions if s.agent.metadata_field == "both")
    start = both.session_start()
    assert start["custom_metadata"] == both.metadata != start["metadata"]  # custom_metadata must win
    assert all(m["custom_metadata"] == both.metadata for m in both.messages())
    assert any(s.headers for s in sessions) and any(not s.headers for s in sessions)
    data = [d for s in sessions for d in s.data()]
    assert data and all(d["type"] == "data" and isinstance(d["data"], dict) and d["turn_id"] for d in data)
    contexts = [m["interruption_context"] for s in sessions for m in s.messages() if "interruption_context" in m]
    barged = [c for c in contexts if c["previous_turn_interrupted"]]
    assert barged and len(barged) < len(contexts)
    turns = {t.turn_id: t for s in sessions for t in s.turns}
    named = [c for c in barged if "assistant_turn_id" in c]
    assert named and len(named) < len(barged)  # the optional field is missing on the older agent's payloads
    for c in named:  # the caller heard the first words_heard words of that turn, and not all of it
        spoken = turns[c["assistant_turn_id"]].text.split()
        assert 0 < c["words_heard"] < len(spoken) and c["text_heard"].split() == spoken[: c["words_heard"]]
    assert all(
        s.torn_replies() for s in sessions if any(t.interrupted for t in s.turns) and s.agent.backend == "agent.webhook"
    )
    # contract section 6: a hosted agent's customer webhook gets no message and no data; a message's
    # words are not always the transcript's; typed text arrives as a message no turn matches; a
    # reply carries the turn id of the request it answers
    hosted = [s for s in sessions if s.agent.backend == "agent.llm"]
    assert hosted and all(not s.messages() and not s.data() and not s.barge_ins_observable for s in hosted)
    said = {(s.session_id, t.turn_id): t.text for s in sessions for t in s.turns if t.role == "user"}
    messages = [(s.session_id, m) for s in sessions for m in s.messages()]
    assert any(said.get((sid, m["turn_id"])) not in (None, m["text"]) for sid, m in messages)  # reworded
    assert any((sid, m["turn_id"]) not in said for sid, m in messages)  # typed
    assert all(
        b.turn_id == a.turn_id
        for s in sessions
        for a, b in zip(s.turns, s.turns[1:])
        if a.role == "user" and b.role == "assistant"
    )
    assert {(s.sample_rate, s.wav_format) for s in sessions if s.recording_outcome == "completed"} >= {
        (8000, "pcm"),
        (8000, "mulaw"),
        (16000, "pcm"),
    }
    assert {s.wav_placeholder for s in sessions} == {None, 0, 0xFFFFFFFF}
    seconds = [s for s in sessions if s.agent.latency_unit == "s"]
    assert seconds and all(s.session_end()["latency"] == pytest.approx(s.latency_ms / 1000, abs=1e-4) for s in seconds)
    assert all(s.rest_record(True)["latency_ms"] == s.latency_ms for s in seconds)
    exchanges = [e["latency_ms"] for s in sessions for e in s.rest_record(True)["transcript"] if e["latency_ms"]]
    assert len(set(exchanges)) > len(sessions)  # per exchange, not one figure per session
    phone = [s for s in sessions if s.to_phone_number]
    assert all(s.to_phone_number in s.agent.phone_numbers for s in phone)


def test_agents_endpoint(api_server):
    batch, api, base = api_server
    r = get(f"{base}/agents")
    assert r.status_code == 200
    listed = r.json()["agents"]
    assert [a["id"] for a in listed] == [a.agent_id for a in batch.agents]
    assert all(a["name"] and a["assigned_phone_numbers"][0]["phone_number"].startswith("+") for a in listed)
    one = batch.agents[1]
    detail = get(f"{base}/agents/{one.agent_id}").json()
    assert {k: v for k, v in detail.items() if k != "config"} == listed[1]
    assert {p["use"] for p in detail["config"]["plugins"]} & {"agent.webhook", "agent.llm"} == {one.backend}
    assert get(f"{base}/agents/nope1234").status_code == 404
    assert get(f"{base}/agents", key="wrong").status_code == 401


def test_cli_simulate_writes_manifest_and_summary(listener_factory, tmp_path):
    start = datetime(2026, 11, 20, 9, tzinfo=UTC)
    batch = generate_batch(5, seed=3, base_time=start, agents=default_agents(7))
    listener = listener_factory(env={"LAYERCODE_WEBHOOK_SECRETS": listener_secrets_json(batch)})
    manifest = tmp_path / "truth.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "layercode_pipeline.cli",
            "simulate",
            "--calls",
            "5",
            "--seed",
            "3",
            "--start",
            "2026-11-20T09:00:00Z",
            "--webhook-url",
            listener.url + "/agents/{agent_id}/webhook",
            "--manifest",
            str(manifest),
            "--fault",
            "duplicate=0.5",
            "--pace",
            "0.001",
            "--update-delay",
            "0.05",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "acknowledged" in r.stdout and "sse_complete" in r.stdout
    assert json.loads(manifest.read_text()) == json.loads(json.dumps(batch.manifest()))


def test_cli_simulate_makes_new_calls_dated_from_now_for_the_same_agents(listener_factory, tmp_path):
    """Two runs without --seed: new sessions each time, dated over the last 8 hours, from the
    same agents (whose secrets the listener was given once); --seed replays a run's calls."""
    agents = default_agents(7)
    listener = listener_factory(
        env={"LAYERCODE_WEBHOOK_SECRETS": listener_secrets_json(generate_batch(1, agents=agents))}
    )

    def run(*extra: str) -> dict:
        manifest = tmp_path / f"m{len(list(tmp_path.iterdir()))}.json"
        r = subprocess.run(
            [sys.executable, "-m", "layercode_pipeline.cli", "simulate", "--calls", "3", "--pace", "0.001"]
            + ["--webhook-url", listener.url + "/agents/{agent_id}/webhook", "--manifest", str(manifest), *extra],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        return {"out": r.stdout, **json.loads(manifest.read_text())}

    first, second = run(), run()
    ids = [{s["session_id"] for s in m["sessions"]} for m in (first, second)]
    assert ids[0] and not ids[0] & ids[1]
    assert {s["agent_id"] for m in (first, second) for s in m["sessions"]} <= {a.agent_id for a in agents}
    now = datetime.now(UTC)
    for s in first["sessions"]:
        assert now - timedelta(hours=8, minutes=5) <= datetime.fromisoformat(s["started_at"]) <= now
    seed = int(re.search(r"--seed (\d+)", first["out"]).group(1))
    assert {s["session_id"] for s in run("--seed", str(seed))["sessions"]} == ids[0]


def test_cli_simulate_fails_when_the_listener_refuses_the_deliveries(listener_factory):
    batch = generate_batch(2, seed=3, agents=default_agents(7))
    listener = listener_factory(env={"LAYERCODE_WEBHOOK_SECRETS": listener_secrets_json(batch)})
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "layercode_pipeline.cli",
            "simulate",
            "--calls",
            "2",
            "--seed",
            "3",
            "--webhook-url",
            listener.url + "/agents/{agent_id}/webhook",
            "--secret",
            "not-the-secret",
            "--pace",
            "0.001",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert "refused" in r.stderr and "acknowledged" in r.stderr


@pytest.mark.parametrize("command", ["demo", "simulate"])
def test_zero_calls_is_a_usage_error_not_a_whole_run(command):
    r = subprocess.run(
        [sys.executable, "-m", "layercode_pipeline.cli", command, "--calls", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "--calls" in r.stderr


def test_simulate_on_a_busy_api_port_says_so_in_one_line():
    import socket

    from click.testing import CliRunner

    from layercode_pipeline.cli import main

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        r = CliRunner().invoke(main, ["simulate", "--calls", "1", "--seed", "3", "--api-port", str(port)])
    assert r.exit_code == 1
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert lines[-1].startswith(f"Error: cannot listen on 127.0.0.1:{port}") and "Traceback" not in r.output
