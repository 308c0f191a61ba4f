"""Layercode as its newer docs describe it (contract section 5), over real HTTP: data events,
custom metadata and headers, barge-in, signature pairs, redirected recordings, odd WAVs."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import duckdb
import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from layercode_pipeline.config import Settings
from layercode_pipeline.contract.signing import compute_signature, sign
from layercode_pipeline.demo import materialize_all
from layercode_pipeline.lib.layercode_client import LayercodeAuthError, LayercodeClient
from layercode_pipeline.lib.wav import MU_LAW, InvalidWav, inspect_wav, wav_header
from layercode_pipeline.simulator.server import BackgroundServer
from webhook_listener.app import create_app
from webhook_listener.responder import Data

from .conftest import SECRET

SID = "fm4l7332owiu9ng5crslh75l"  # production-shaped: no prefix
CONV = "q0x2c8n1kz7v3m5b"


def post(url: str, payload: dict, headers: dict | None = None, signature: str | None = None) -> httpx.Response:
    body = orjson.dumps(payload)
    h = {"layercode-signature": signature or sign(body, SECRET), "content-type": "application/json", **(headers or {})}
    return httpx.post(url + "/webhook", content=body, headers=h, timeout=10)


@pytest.fixture
def listener(tmp_path):
    async def slow_responder(event, settings):
        yield "first sentence."
        yield Data({"step": 1})
        await asyncio.sleep(30)  # the caller barges in long before this ends
        yield "never heard"

    # the customer's custom headers named, and a prefix: credential-like names and the caller's
    # IP are still never kept through it
    settings = Settings(
        data_dir=tmp_path / "data", webhook_secret=SECRET, kept_headers=["user-agent", "x-tenant-id", "x-*"]
    )
    with BackgroundServer(create_app(settings, responder=slow_responder)) as server:
        yield server.url, tmp_path / "data"


def test_signature_pairs_any_matching_v1_extra_pairs_and_two_headers(listener):
    url, _ = listener
    payload = {"type": "session.end", "session_id": SID}
    body = orjson.dumps(payload)
    ts = int(time.time())
    good = compute_signature(body, SECRET, ts)
    assert post(url, payload, signature=f"t={ts},v1={'0' * 64},v1={good}").status_code == 200  # rotation
    assert post(url, payload, signature=f"t={ts},v0=abc,v1={good},scheme=x").status_code == 200  # extra pairs
    assert post(url, payload, signature=f"t={ts},v1={'0' * 64}").status_code == 401
    two = httpx.post(
        url + "/webhook",
        content=body,
        timeout=10,
        headers=[("layercode-signature", f"t={ts},v1={good}"), ("layercode-signature", f"t={ts},v1={good}")],
    )
    assert two.status_code == 401 and two.json()["error"] == "ambiguous_signature"


def test_data_events_json_reply_and_custom_headers_landed_without_credentials(listener):
    url, data = listener
    r = post(
        url,
        {
            "type": "data",
            "session_id": SID,
            "turn_id": "t9",
            "data": {"clicked": "upgrade"},
            "custom_metadata": {"tenant_id": "acme"},
        },
        headers={"x-tenant-id": "acme", "authorization": "Bearer secret-token", "cookie": "sid=1"},
    )
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    [env] = [e for e in landed_envelopes_so_far(data) if e["event_type"] == "data"]
    assert env["headers"]["x-tenant-id"] == "acme"
    assert not {"authorization", "cookie", "layercode-signature"} & set(env["headers"])


@pytest.mark.parametrize(
    "name", ["x-api-token", "x-customer-secret", "backend-auth", "x-crm-api-key", "X-Bearer", "my-password"]
)
def test_custom_headers_that_name_a_credential_are_never_landed(listener, name):
    """Custom headers are free-form (contract section 6) and may carry the customer's credentials
    for its own backend: a name that suggests one is not landed, whatever the allow-list says."""
    url, data = listener
    sid = f"sess_{name.lower()}"
    r = post(
        url,
        {"type": "data", "session_id": sid, "turn_id": "t1", "data": {}},
        headers={name: "s3cr3t-value", "x-request-source": "ivr"},
    )
    assert r.status_code == 200
    [env] = [
        e
        for e in landed_envelopes_so_far(data)
        if e.get("session_id", "") == sid or orjson.loads(e["body"]).get("session_id") == sid
    ]
    assert env["headers"]["x-request-source"] == "ivr" and name.lower() not in env["headers"]
    assert all("s3cr3t" not in v for v in env["headers"].values())


def test_by_default_only_named_headers_are_landed_and_the_callers_ip_only_when_asked(tmp_path):
    headers = {"x-tenant-id": "acme", "x-forwarded-for": "203.0.113.7", "user-agent": "layercode", "x-crm-key": "k"}
    for kept, expected in (
        (None, {"user-agent", "content-type"}),  # the default: no custom header, no IP
        (["user-agent", "x-*"], {"user-agent", "x-tenant-id"}),  # a prefix never keeps the IP or a key
        (["x-tenant-id", "x-forwarded-for", "x-crm-key"], {"x-tenant-id", "x-forwarded-for"}),  # named: kept
    ):
        data = tmp_path / str(len(str(kept)))
        settings = Settings(data_dir=data, webhook_secret=SECRET, **({"kept_headers": kept} if kept else {}))
        with BackgroundServer(create_app(settings)) as server:
            r = post(server.url, {"type": "data", "session_id": "sess_h", "turn_id": "t1", "data": {}}, headers=headers)
            assert r.status_code == 200
            [env] = landed_envelopes_so_far(data)
        assert set(env["headers"]) == expected, kept


def landed_envelopes_so_far(data: Path) -> list[dict]:
    """Every envelope landed so far, sealed or in the open segment (acknowledged = fsynced)."""
    out = []
    for path in (data / "landing").rglob("*.jsonl*"):
        out += [orjson.loads(line) for line in path.read_bytes().splitlines() if line]
    return out


def test_barge_in_tears_the_sse_reply_and_is_logged_as_cancelled(listener, caplog):
    url, data = listener
    body = orjson.dumps({"type": "message", "session_id": SID, "turn_id": "t2", "text": "wait, stop"})
    caplog.set_level(logging.INFO)
    with httpx.Client(timeout=10) as client:
        with client.stream(
            "POST", url + "/webhook", content=body, headers={"layercode-signature": sign(body, SECRET)}
        ) as r:
            assert r.status_code == 200 and r.headers["content-encoding"] == "none"
            first = next(r.iter_lines())
            assert first.startswith("data:") and "first sentence" in first
        # leaving the block closes the connection mid-stream: the caller barged in
    deadline = time.monotonic() + 10  # a liveness bound: the listener notices the torn connection
    while time.monotonic() < deadline and "reply_cancelled" not in caplog.text:
        time.sleep(0.1)
    assert "reply_cancelled" in caplog.text
    assert any(e["event_type"] == "message" for e in landed_envelopes_so_far(data))
    assert "Traceback" not in caplog.text and " 500" not in caplog.text


def test_metadata_headers_data_and_barge_ins_reach_the_marts(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERCODE_PROMOTED_METADATA_KEYS", "tenant_id,crm_id")
    data = tmp_path / "data"
    settings = Settings(data_dir=data, webhook_secret=SECRET, kept_headers=["x-tenant-id"])
    base = 1_795_000_000_000
    with BackgroundServer(create_app(settings)) as server:
        url = server.url
        common = {"session_id": SID, "conversation_id": CONV}
        assert (
            post(
                url,
                {
                    "type": "session.start",
                    **common,
                    "turn_id": "w",
                    "metadata": {"tenant_id": "old"},
                    "custom_metadata": {"tenant_id": "acme", "crm_id": "c-42"},
                },
                headers={"x-tenant-id": "acme"},
            ).status_code
            == 200
        )
        assert post(url, {"type": "message", **common, "turn_id": "u1", "text": "hi"}).status_code == 200
        assert (
            post(
                url,
                {
                    "type": "message",
                    **common,
                    "turn_id": "u2",
                    "text": "no stop",
                    "interruption_context": {
                        "previous_turn_interrupted": True,
                        "words_heard": 3,
                        "text_heard": "Our plans start",
                    },
                },
            ).status_code
            == 200
        )
        assert post(url, {"type": "data", **common, "turn_id": "u2", "data": {"ui": "plan_page"}}).status_code == 200
        # legacy payload on another session: only `metadata`
        assert (
            post(
                url,
                {
                    "type": "session.end",
                    "session_id": "legacy1",
                    "conversation_id": "c2",
                    "agent_id": "default",
                    "metadata": {"tenant_id": "globex"},
                    "transcript": [],
                },
            ).status_code
            == 200
        )
        assert (
            post(
                url,
                {
                    "type": "session.end",
                    **common,
                    "agent_id": "default",
                    "started_at": "2026-11-20T09:00:00Z",
                    "ended_at": "2026-11-20T09:01:00Z",
                    "duration": 60000,
                    "transcript": [
                        {"role": "assistant", "text": "Hello!", "timestamp": base},
                        {"role": "user", "text": "hi", "timestamp": base + 1000},
                        {"role": "assistant", "text": "Our plans start at ten", "timestamp": base + 2000},
                        {"role": "user", "text": "no stop", "timestamp": base + 3000},
                        {"role": "assistant", "text": "Sure.", "timestamp": base + 4000},
                    ],
                },
            ).status_code
            == 200
        )
    materialize_all(data, api_url=None, api_key=None, grace_minutes=60)
    con = duckdb.connect(str(data / "serving" / "analytics.duckdb"), read_only=True)
    try:
        row = con.execute(
            "select metadata->>'$.tenant_id', metadata_tenant_id, metadata_crm_id, "
            "request_headers->>'$.x-tenant-id', interruptions from marts.fct_sessions "
            "where session_id = ?",
            [SID],
        ).fetchone()
        assert row == ("acme", "acme", "c-42", "acme", 1)
        assert con.execute(
            "select metadata_tenant_id from marts.fct_sessions where session_id = 'legacy1'"
        ).fetchone() == ("globex",)
        turns = con.execute(
            "select position, role, interrupted, words_heard, text_heard from marts.fct_turns "
            "where session_id = ? order by position",
            [SID],
        ).fetchall()
        assert turns == [
            (1, "assistant", False, None, None),
            (2, "user", None, None, None),
            (3, "assistant", True, 3.0, "Our plans start"),
            (4, "user", None, None, None),
            (5, "assistant", False, None, None),
        ]
        [(rate,)] = con.execute(
            "select interruption_rate from marts.agg_daily_call_metrics where interruptions > 0"
        ).fetchall()
        assert rate == pytest.approx(1 / 3)
    finally:
        con.close()
    wh = duckdb.connect(str(data / "warehouse.duckdb"), read_only=True)
    try:
        assert wh.execute("select session_id, turn_id, data->>'$.ui' from staging.stg_webhook_data").fetchall() == [
            (SID, "u2", "plan_page")
        ]
    finally:
        wh.close()


# --- REST: redirects to signed storage, fatal statuses, unusual WAVs ---------------------------


def mulaw_placeholder_wav(seconds: float = 0.5, rate: int = 8000) -> bytes:
    samples = int(seconds * rate)
    return (
        wav_header(samples, rate, 1, 8, format_tag=MU_LAW, placeholder=0xFFFFFFFF)
        + bytes(range(256)) * (samples // 256)
        + bytes(samples % 256)
    )


def test_recording_follows_a_redirect_without_sending_the_key_to_storage(tmp_path):
    wav = mulaw_placeholder_wav()
    seen: list[str | None] = []

    async def blob(request: Request) -> Response:
        seen.append(request.headers.get("authorization"))
        if "authorization" in request.headers:  # signed storage refuses a foreign credential
            return Response("foreign credential", 400)
        return Response(wav, media_type="audio/wav")

    storage = BackgroundServer(Starlette(routes=[Route("/blob/{name}", blob)])).start()

    async def recording(request: Request) -> Response:
        if request.headers.get("authorization") != "Bearer sk_x":
            return JSONResponse({"error": "unauthorized"}, 401)
        if request.path_params["sid"] == "broke":
            return JSONResponse({"error": "insufficient_balance"}, 402)
        return RedirectResponse(storage.url + "/blob/x.wav?sig=abc", 302)

    api = BackgroundServer(Starlette(routes=[Route("/v1/agents/{aid}/sessions/{sid}/recording", recording)])).start()
    try:

        async def run():
            async with LayercodeClient("sk_x", api.url + "/v1", backoff_initial_s=0.01, max_attempts=2) as client:
                ok = await client.download_recording("mxdi9mls", SID, tmp_path / "r.wav")
                with pytest.raises(LayercodeAuthError, match="402 Payment Required.*balance"):
                    await client.download_recording("mxdi9mls", "broke", tmp_path / "b.wav")
                return ok

        result = asyncio.run(run())
    finally:
        api.stop()
        storage.stop()
    assert result.status == "downloaded" and seen == [None]
    assert (tmp_path / "r.wav").read_bytes() == wav
    assert result.wav.encoding == "mulaw" and result.wav.size_placeholder
    assert result.wav.duration_s == pytest.approx(0.5)


@pytest.mark.parametrize(
    "rate, bits, tag, placeholder", [(16000, 16, 1, None), (8000, 16, 1, 0), (8000, 8, MU_LAW, None)]
)
def test_wav_variants_are_kept(tmp_path, rate, bits, tag, placeholder):
    data = b"\x01\x02" * rate  # one second at 16 bit, two at 8 bit
    path = tmp_path / "a.wav"
    path.write_bytes(wav_header(len(data), rate, 1, bits, format_tag=tag, placeholder=placeholder) + data)
    info = inspect_wav(path)
    assert (info.sample_rate, info.bits_per_sample, info.data_bytes) == (rate, bits, len(data))


def test_a_truncated_wav_with_real_sizes_is_still_refused(tmp_path):
    path = tmp_path / "t.wav"
    path.write_bytes(wav_header(1000) + b"\x00" * 10)
    with pytest.raises(InvalidWav, match="truncated|claims"):
        inspect_wav(path)


# --- over the simulator: agents, latency units, 402 ---------------------------------------------


def test_agents_and_latency_units_over_the_simulator(tmp_path, capsys):
    """Without a key the marts still build, agent names wait and a seconds latency is flagged, not
    guessed; with a key the names arrive, the unit is learned from REST and a rename reaches old
    sessions; a 402 stops the run with what to fix."""
    from layercode_pipeline.simulator import SimulatorAPI, deliver, generate_batch, listener_secrets_json

    data = tmp_path / "data"
    batch = generate_batch(16, seed=4242)
    sales = next(a for a in batch.agents if a.latency_unit == "s")
    settings = Settings(data_dir=data, webhook_secrets=listener_secrets_json(batch))
    with BackgroundServer(create_app(settings)) as listener:
        assert deliver(batch, listener.url + "/agents/{agent_id}/webhook", faults={}).failed == 0

    def sessions(sql: str):
        con = duckdb.connect(str(data / "serving" / "analytics.duckdb"), read_only=True)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()

    meta = materialize_all(data, api_url=None, api_key=None, grace_minutes=0)
    checks = meta["asset_checks"]
    assert checks["layercode_agents:agents_listed"] == {"passed": False, "severity": "WARN"}
    assert checks["marts/fct_sessions:warn_latency_looks_like_seconds"]["passed"] is False
    # kept raw and flagged, never averaged as milliseconds
    assert sessions(
        f"select count(agent_name), count(latency_ms), bool_and(webhook_latency_unit_unknown), "
        f"max(webhook_latency_reported) < 10 from marts.fct_sessions "
        f"where agent_id = '{sales.agent_id}'"
    )[0] == (0, 0, True, True)

    api = SimulatorAPI(api_key="sk_live", seed=1)
    api.register(batch, ready_in_s=0)
    with api.serve() as server:
        meta = materialize_all(data, api_url=server.url + "/v1", api_key="sk_live", grace_minutes=0)
        assert meta["asset_checks"]["layercode_agents:agents_listed"]["passed"] is True
        assert meta["asset_checks"]["marts/fct_sessions:warn_latency_looks_like_seconds"]["passed"] is True
        truth = {s.session_id: s.latency_ms for s in batch.sessions}
        rows = sessions(
            "select session_id, agent_name, latency_ms, latency_source, webhook_latency_unit from marts.fct_sessions"
        )
        assert {r[1] for r in rows} == {a.name for a in batch.agents}
        assert all(r[2] == pytest.approx(truth[r[0]]) for r in rows)
        assert any(r[3] == "session.end" and r[4] == "seconds" for r in rows)  # converted, from the learned unit

        sales.name = "Acme Outbound Sales"  # renamed in Layercode: a new version of its record
        materialize_all(data, api_url=server.url + "/v1", api_key="sk_live", grace_minutes=0)
        assert sessions(f"select distinct agent_name from marts.fct_sessions where agent_id = '{sales.agent_id}'") == [
            ("Acme Outbound Sales",)
        ]
        assert sessions(
            f"select distinct agent_name from marts.agg_daily_call_metrics where agent_id = '{sales.agent_id}'"
        ) == [("Acme Outbound Sales",)]

        api.faults = {"payment_required": 1.0}  # the org's balance ran out
        con = duckdb.connect(str(data / "warehouse.duckdb"))
        con.execute("delete from raw.layercode_session_details")  # so the backfill has work to ask for
        con.close()
        with pytest.raises(RuntimeError, match="backfill stage failed"):
            materialize_all(data, api_url=server.url + "/v1", api_key="sk_live", grace_minutes=0)
    logs = capsys.readouterr()
    assert "402 Payment Required: the org's balance is insufficient" in logs.out + logs.err  # what to fix


@pytest.mark.parametrize("stamp", [b"1" * 400, "\u00b2\u00b3".encode("latin-1"), b"9" * 13])
def test_absurd_signature_timestamps_are_malformed_not_server_errors(listener, stamp, caplog):
    """A 400-digit `t=` overflowed the float arithmetic, and `t=` in non-ASCII digits (here the
    superscripts a latin-1 header can carry) passed isdigit() and failed int(): both were a 500
    with a traceback."""
    url, _ = listener
    body = orjson.dumps({"type": "session.end", "session_id": SID})
    r = httpx.post(
        url + "/webhook",
        content=body,
        timeout=10,
        headers=[(b"layercode-signature", b"t=" + stamp + b",v1=" + b"0" * 64), (b"content-type", b"application/json")],
    )
    assert (r.status_code, r.json()["error"]) == (401, "malformed_signature")
    assert "Traceback" not in caplog.text


def test_a_data_webhook_is_answered_with_an_empty_object(listener):
    """Layercode forwards the answer to a `data` webhook to the caller's browser as
    `response.data` (contract section 6): the default must be safe for a web client to receive."""
    url, _ = listener
    r = post(url, {"type": "data", "session_id": SID, "turn_id": "t1", "data": {"clicked": "buy"}})
    assert (r.status_code, r.headers["content-type"], r.content) == (200, "application/json", b"{}")


def test_a_data_responder_supplies_the_answer(tmp_path):
    async def answer(event, settings):
        return {"ack": event.data["clicked"]}

    settings = Settings(data_dir=tmp_path / "data", webhook_secret=SECRET)
    with BackgroundServer(create_app(settings, data_responder=answer)) as server:
        r = post(server.url, {"type": "data", "session_id": SID, "turn_id": "t1", "data": {"clicked": "buy"}})
    assert (r.status_code, r.json()) == (200, {"ack": "buy"})


def test_recording_redirects_judged_by_every_hop_and_private_targets_refused(tmp_path):
    """A chain API -> storage -> API arrives back without the key (dropped when it left): its 401
    is the recording's error, not "check LAYERCODE_API_KEY" stopping the run. A redirect to a
    loopback/private address is refused unless allowed. A storage error's body (it may echo the
    signed URL) is neither stored nor logged."""

    async def bounce(request: Request) -> Response:  # storage sends the client back to the API
        return RedirectResponse(api.url + "/v1/back", 302)

    async def leaky(request: Request) -> Response:
        return Response("<Error>AccessKeyId AKIASECRET signature=abc</Error>", 404, media_type="application/xml")

    storage = BackgroundServer(Starlette(routes=[Route("/bounce", bounce), Route("/leaky", leaky)])).start()

    async def back(request: Request) -> Response:
        return JSONResponse({"error": "unauthorized"}, 401)  # no key: httpx dropped it leaving the origin

    async def recording(request: Request) -> Response:
        return RedirectResponse(storage.url + ("/bounce" if request.path_params["sid"] == "a" else "/leaky"), 302)

    api = BackgroundServer(
        Starlette(routes=[Route("/v1/agents/{aid}/sessions/{sid}/recording", recording), Route("/v1/back", back)])
    ).start()

    async def download(sid: str, private_redirects: bool | None):
        async with LayercodeClient(
            "sk_x", api.url + "/v1", backoff_initial_s=0.01, max_attempts=2, private_redirects=private_redirects
        ) as client:
            return await client.download_recording("ag", sid, tmp_path / f"{sid}.wav")

    try:
        bounced = asyncio.run(download("a", None))  # loopback API: loopback storage allowed
        leaked = asyncio.run(download("b", None))
        refused = asyncio.run(download("a", False))
    finally:
        api.stop()
        storage.stop()
    assert bounced.status == "error" and "401" in bounced.detail and "LAYERCODE_API_KEY" not in bounced.detail
    assert leaked.status == "error" and "404" in leaked.detail and "AKIA" not in leaked.detail
    assert refused.status == "error" and "refused a redirect" in refused.detail
