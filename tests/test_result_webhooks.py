"""Result webhooks: signed as Standard Webhooks (verified by the `standardwebhooks` package),
recorded before the first attempt, delivered at least once under one webhook-id, through
receivers that fail, go down, hang, redirect, throttle or are gone, and a SIGKILL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time

import dagster as dg
import pytest
from standardwebhooks.webhooks import Webhook
from starlette.responses import JSONResponse, RedirectResponse, Response

from layercode_pipeline.config import ConfigError, Settings, parse_result_endpoints
from layercode_pipeline.lib.result_webhooks.delivery import Dispatcher
from layercode_pipeline.lib.result_webhooks.messages import CALL_ANALYZED, Message
from layercode_pipeline.lib.result_webhooks.outbox import Outbox
from layercode_pipeline.lib.result_webhooks.signing import new_secret, webhook_headers
from layercode_pipeline.simulator.receiver import ResultReceiver
from layercode_pipeline.simulator.server import BackgroundServer, free_port


class Clock:
    """Scheduling time the test moves forward (signatures always carry the wall clock)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def messages(n: int, agent: str = "agent_a", prefix: str = "s") -> list[Message]:
    return [
        Message.build(
            CALL_ANALYZED,
            (f"{prefix}{i}", "key1"),
            {"session_id": f"{prefix}{i}", "agent_id": agent, "analysis": {"summary": f"call {i}"}},
        )
        for i in range(n)
    ]


def endpoints(*pairs: tuple[str, str | list[str]], **extra) -> list:
    return parse_result_endpoints(json.dumps([{"url": url, "secret": secret, **extra} for url, secret in pairs]))


def serve(receiver: ResultReceiver, port: int | None = None) -> BackgroundServer:
    return BackgroundServer(receiver.app, port=port)  # started by `with`


def test_every_delivery_verifies_with_the_reference_library_and_rotation_signs_with_each(tmp_path):
    old, new = new_secret(), new_secret()
    # a receiver still on the old secret and one already on the new: both verify the same message
    on_old, on_new = ResultReceiver(old), ResultReceiver(new)
    with serve(on_old) as a, serve(on_new) as b:
        outbox = Outbox(tmp_path / "outbox.sqlite3")
        eps = endpoints((a.url + "/hook", [old, new]), (b.url + "/hook", [old, new]))
        assert outbox.enqueue(messages(3), eps) == 6
        with Dispatcher(outbox, eps) as d:
            stats = d.run_until_idle()
    assert stats.delivered == 6 and on_old.rejected == on_new.rejected == 0
    assert set(on_old.unique()) == set(on_new.unique()) == {m.id for m in messages(3)}
    got = on_old.received[0]
    assert got.body["type"] == "call.analyzed" and got.body["schema_version"] == 1
    # and a wrong secret is refused by the same library: the test can fail
    body = messages(1)[0].body
    headers = webhook_headers(endpoints(("http://x/", new_secret()))[0].secrets, "msg_1", int(time.time()), body)
    with pytest.raises(Exception, match="signature"):
        Webhook(old).verify(body, headers)


def test_enqueueing_the_same_result_twice_is_one_message_and_filters_apply(tmp_path):
    outbox = Outbox(tmp_path / "o.sqlite3")
    eps = parse_result_endpoints(
        json.dumps(
            [
                {"url": "http://127.0.0.1:1/all", "secret": new_secret()},
                {"url": "http://127.0.0.1:1/b-only", "secret": new_secret(), "agents": ["agent_b"]},
                {"url": "http://127.0.0.1:1/erasures", "secret": new_secret(), "events": ["call.erased"]},
            ]
        )
    )
    assert outbox.enqueue(messages(4) + messages(2, agent="agent_b", prefix="b"), eps) == 6 + 2
    assert outbox.enqueue(messages(4), eps) == 0  # the same analysis again: nothing new
    counts = outbox.counts()
    assert counts["http://127.0.0.1:1/all"]["pending"] == 6
    assert counts["http://127.0.0.1:1/b-only"]["pending"] == 2
    assert "http://127.0.0.1:1/erasures" not in counts


def test_faulty_receivers_lose_nothing_and_duplicates_share_the_webhook_id(tmp_path):
    clock = Clock()
    secret = new_secret()
    healthy = ResultReceiver(secret)
    flaky = ResultReceiver(secret, status_after=lambda n: 500 if n % 2 else 200)  # keeps it, says 500 half the time
    later = ResultReceiver(secret)  # down for a minute, then back
    later_port = free_port()
    throttled = ResultReceiver(secret, status_after=lambda n: 200 if n > 1 else 429)

    async def too_many(n: int) -> Response | None:
        return JSONResponse({}, status_code=429, headers={"retry-after": "120"}) if n == 1 else None

    throttled.fault = too_many
    with serve(healthy) as h, serve(flaky) as f, serve(throttled) as t:
        eps = endpoints(
            (h.url + "/", secret),
            (f.url + "/", secret),
            (f"http://127.0.0.1:{later_port}/", secret),
            (t.url + "/", secret),
        )
        outbox = Outbox(tmp_path / "o.sqlite3")
        sent = messages(12)
        outbox.enqueue(sent, eps, now=clock.now)
        with Dispatcher(outbox, eps, timeout_s=5, schedule_s=[5, 300, 1800, 7200], clock=clock) as d:
            d.run_until_idle()
            assert set(healthy.unique()) == {m.id for m in sent}  # the healthy one never waited
            rows = {r["endpoint_url"]: r for r in outbox.deliveries(endpoint_url=f"http://127.0.0.1:{later_port}/")}
            assert rows and all(
                r["status"] == "pending" for r in outbox.deliveries(endpoint_url=f"http://127.0.0.1:{later_port}/")
            )
            # the throttled endpoint said Retry-After: 120, later than the schedule's 5 s
            first = outbox.deliveries(endpoint_url=t.url + "/", status="pending")
            assert len(first) == 1 and first[0]["next_attempt_at"] >= clock.now + 120
            with serve(later, port=later_port):
                for step in (5, 300, 1800):  # the clock moves on; the endpoint came back after a minute
                    clock.advance(step)
                    d.run_until_idle()
    for receiver in (healthy, flaky, later, throttled):
        assert set(receiver.unique()) == {m.id for m in sent}, receiver
        assert receiver.rejected == 0
    assert len(flaky.received) > len(flaky.unique())  # duplicates: the same webhook-id again
    assert outbox.counts()[f"http://127.0.0.1:{later_port}/"] == {"pending": 0, "delivered": 12, "dead": 0}


def test_a_hung_endpoint_never_delays_the_others(tmp_path):
    secret = new_secret()
    release = threading.Event()

    async def hang(_: int) -> Response | None:
        while not release.is_set():
            await asyncio.sleep(0.05)
        return None

    hung, healthy = ResultReceiver(secret, fault=hang), ResultReceiver(secret)
    with serve(hung) as hs, serve(healthy) as ok:
        eps = endpoints((hs.url + "/", secret), (ok.url + "/", secret))
        outbox = Outbox(tmp_path / "o.sqlite3")
        sent = messages(10)
        outbox.enqueue(sent, eps)
        with Dispatcher(outbox, eps, timeout_s=120) as d:
            d.run_round(wait_s=0)
            while len(healthy.unique()) < len(sent) or not d._busy[ok.url + "/"].done():
                time.sleep(0.05)  # (the healthy worker also records its last attempt before it is done)
            # every message reached the healthy endpoint while the hung one still held its first
            assert hung.requests == 1 and not d._busy[hs.url + "/"].done()
            assert d.run_round(wait_s=0).busy_endpoints == 1  # the next round does not pile onto it
            release.set()
            d.run_until_idle()
    assert set(hung.unique()) == {m.id for m in sent}


def test_a_timeout_is_an_attempt_and_the_endpoint_waits_out_the_round(tmp_path):
    secret = new_secret()

    async def hang(_: int) -> Response | None:
        # four times the client's timeout: long enough to be one, short enough that the server
        # does not hold its shutdown for the sleep's remainder
        await asyncio.sleep(2)
        return None

    hung = ResultReceiver(secret, fault=hang)
    with serve(hung) as hs:
        eps = endpoints((hs.url + "/", secret))
        outbox = Outbox(tmp_path / "o.sqlite3")
        outbox.enqueue(messages(4), eps)
        with Dispatcher(outbox, eps, timeout_s=0.5) as d:
            stats = d.run_round()
    rows = outbox.deliveries()
    assert stats.retrying == 1 and stats.deferred == 3
    assert sorted(r["attempts"] for r in rows) == [0, 0, 0, 1]
    assert [r["last_error"] for r in rows if r["attempts"]][0].startswith("timeout")


def test_redirects_are_not_followed_and_the_last_failure_is_dead_lettered_then_replayed(tmp_path):
    clock = Clock()
    secret = new_secret()
    target = ResultReceiver(secret)

    async def redirect(_: int) -> Response | None:
        return RedirectResponse(target_url, status_code=307)

    redirecting = ResultReceiver(secret, fault=redirect)
    with serve(target) as t, serve(redirecting) as r:
        target_url = t.url + "/"
        eps = endpoints((r.url + "/", secret))
        outbox = Outbox(tmp_path / "o.sqlite3")
        outbox.enqueue(messages(2), eps, now=clock.now)
        with Dispatcher(outbox, eps, schedule_s=[1, 1], clock=clock) as d:
            for _ in range(3):
                d.run_until_idle()
                clock.advance(2)
        assert target.requests == 0  # never followed
        dead = outbox.deliveries(status="dead")
        assert len(dead) == 2 and all(row["attempts"] == 3 and row["last_status"] == 307 for row in dead)
        # fixed on the receiver's side: replay sends them again, same ids
        redirecting.fault = None
        assert outbox.replay(status="dead", now=clock.now) == 2
        with Dispatcher(outbox, eps, clock=clock) as d:
            d.run_until_idle()
    assert set(redirecting.unique()) == {m.id for m in messages(2)}


def test_410_gone_disables_the_endpoint(tmp_path):
    secret = new_secret()

    async def gone(_: int) -> Response | None:
        return Response(status_code=410)

    receiver = ResultReceiver(secret, fault=gone)
    with serve(receiver) as r:
        eps = endpoints((r.url + "/", secret))
        outbox = Outbox(tmp_path / "o.sqlite3")
        outbox.enqueue(messages(5), eps)
        with Dispatcher(outbox, eps) as d:
            d.run_until_idle()
            outbox.enqueue(messages(2, prefix="late"), eps)
            d.run_until_idle()
    assert receiver.requests == 1  # one answer was enough
    assert outbox.counts()[r.url + "/"] == {"pending": 0, "delivered": 0, "dead": 7}
    assert outbox.disabled_endpoints() == {r.url + "/": "410 Gone"}


def test_a_killed_delivering_process_loses_nothing(tmp_path):
    secret = new_secret()

    async def slow(_: int) -> Response | None:
        await asyncio.sleep(0.1)
        return None

    receiver = ResultReceiver(secret, fault=slow)
    with serve(receiver) as r:
        config = json.dumps([{"url": r.url + "/hook", "secret": secret}])
        outbox_path = tmp_path / "outbox.sqlite3"
        outbox = Outbox(outbox_path)
        sent = messages(40)
        outbox.enqueue(sent, parse_result_endpoints(config))
        env = {
            **os.environ,
            "LAYERCODE_RESULT_WEBHOOKS": config,
            "LAYERCODE_OUTBOX_PATH": str(outbox_path),
            "LAYERCODE_RESULT_WEBHOOK_TIMEOUT_S": "1",
        }
        cmd = [sys.executable, "-m", "layercode_pipeline.cli", "deliveries", "run", "--interval", "0.2"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while len(receiver.received) < 8:
            assert proc.poll() is None
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)  # mid-batch: some deliveries leased, one maybe in flight
        proc.wait(10)
        assert len(receiver.unique()) < len(sent)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while outbox.counts()[r.url + "/hook"]["delivered"] < len(sent):
                assert proc.poll() is None
                time.sleep(0.1)
        finally:
            proc.terminate()
            proc.wait(10)
    assert set(receiver.unique()) == {m.id for m in sent}
    assert receiver.rejected == 0


@pytest.mark.parametrize(
    "config, message",
    [
        ('[{"url": "ftp://example.com/x", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}]', "http(s) URL"),
        ('[{"url": "https://example.com/x", "secret": "sk_hunter2hunter2hunter2"}]', "whsec_"),
        ('[{"url": "https://example.com/x", "secret": "whsec_not base64 at all!!"}]', "not base64"),
        (
            '[{"url": "https://example.com/x", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "events": ["call.x"]}]',
            "unknown event types",
        ),
        ("{not json", "not JSON"),
    ],
)
def test_a_malformed_endpoint_is_a_clear_error_naming_the_setting_never_the_secret(monkeypatch, config, message):
    from layercode_pipeline.defs.resources import resources_from_settings

    monkeypatch.setenv("LAYERCODE_RESULT_WEBHOOKS", config)
    with pytest.raises(ConfigError) as err:
        resources_from_settings(Settings())
    text = str(err.value)
    assert "LAYERCODE_RESULT_WEBHOOKS" in text and message in text
    for secret in ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "hunter2", "not base64 at all"):
        assert secret not in text
    # the CLI says it in one line
    r = subprocess.run(
        [sys.executable, "-m", "layercode_pipeline.cli", "deliveries", "list"],
        capture_output=True,
        text=True,
        env={**os.environ, "LAYERCODE_RESULT_WEBHOOKS": config},
    )
    assert r.returncode != 0 and "LAYERCODE_RESULT_WEBHOOKS" in r.stderr and "Traceback" not in r.stderr
    assert "hunter2" not in r.stderr and "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" not in r.stderr


def test_the_secret_reaches_resources_as_an_envvar(monkeypatch):
    from layercode_pipeline.defs.resources import resources_from_settings

    config = json.dumps([{"url": "https://example.com/x", "secret": new_secret()}])
    monkeypatch.setenv("LAYERCODE_RESULT_WEBHOOKS", config)
    resource = resources_from_settings()["result_webhooks"]
    assert isinstance(resource.endpoints_json, dg.EnvVar)
    assert resource.endpoints_json.env_var_name == "LAYERCODE_RESULT_WEBHOOKS"
    assert "whsec_" not in repr(resource)


def test_the_sensor_delivers_the_outbox_without_launching_a_run(tmp_path):
    from layercode_pipeline.defs.resources import OpenAIResource, ResultWebhooksResource, StorageResource
    from layercode_pipeline.defs.results.automation import result_webhooks_sensor

    secret = new_secret()
    receiver = ResultReceiver(secret)
    with serve(receiver) as r:
        config = json.dumps([{"url": r.url + "/", "secret": secret}])
        Outbox(tmp_path / "o.sqlite3").enqueue(messages(3), parse_result_endpoints(config))
        resource = ResultWebhooksResource(endpoints_json=config, outbox_path=str(tmp_path / "o.sqlite3"))
        with dg.instance_for_test() as instance:
            context = dg.build_sensor_context(
                instance=instance,
                resources={
                    "result_webhooks": resource,
                    "storage": StorageResource(data_dir=str(tmp_path / "data")),
                    "openai": OpenAIResource(),
                },
            )
            result = result_webhooks_sensor(context)
            while len(receiver.unique()) < 3:  # a slow machine: the tick's wait ran out first
                time.sleep(0.05)
    assert isinstance(result, dg.SkipReason)
    assert len(receiver.unique()) == 3 and receiver.rejected == 0
