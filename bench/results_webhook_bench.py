"""Results back into the customer's product: how long from a call's `session.end` being
acknowledged to its signed `call.analyzed` arriving at the customer's receiver, with the
project's own automation on a real Dagster instance.

    .venv/bin/python bench/results_webhook_bench.py [--calls 30] [--interval 3] [--only offline|openai]

What runs, per provider: the code server and `dagster-daemon` over deploy/workspace.yaml with the instance config the
demo writes (every sensor on by default: `result_webhooks_sensor` analyses each sealed
session.end straight from the landing and sends it (the express path), the landing sensor
launches the ingest runs, whose `result_webhooks` step sends what the express path did not),
`layercode-pipeline listen`, the simulator delivering one call every `--interval` seconds
(steady traffic), and a local receiver verifying every delivery with the `standardwebhooks`
package. The offline provider first; then the `openai` provider against a local
OpenAI-compatible server that answers each request after 1 s. Dagster's own start-up (the
daemon, the code location, the first run on a fresh instance) happens before the first call
and is printed on its own, not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import dagster as dg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    dagster_home,
    percentile,
    pipeline_env,
    start_listener_and_daemon,
    stop_processes,
    wait_first_ingest,
    wait_healthy,
)

from layercode_pipeline.contract.events import SESSION_END  # noqa: E402
from layercode_pipeline.lib.result_webhooks.messages import CALL_ANALYZED  # noqa: E402
from layercode_pipeline.lib.result_webhooks.signing import new_secret  # noqa: E402
from layercode_pipeline.simulator import Deliverer, generate_batch, listener_secrets_json  # noqa: E402
from layercode_pipeline.simulator.generate import SimBatch  # noqa: E402
from layercode_pipeline.simulator.llm import OpenAIStub  # noqa: E402
from layercode_pipeline.simulator.receiver import ResultReceiver  # noqa: E402
from layercode_pipeline.simulator.server import BackgroundServer  # noqa: E402


def measure(provider: str, calls: int, interval: float, seed: int) -> dict:
    root = Path(tempfile.mkdtemp(prefix=f"results-bench-{provider}-"))
    data = root / "data"
    data.mkdir()
    home = dagster_home(root)
    batch = generate_batch(calls, seed=seed)
    secret = new_secret()
    receiver = ResultReceiver(secret)
    receiver_server = BackgroundServer(receiver.app).start()
    stub = OpenAIStub(delay_s=1.0) if provider == "openai" else None
    stub_server = BackgroundServer(stub.app).start() if stub else None
    extra = {
        "LAYERCODE_LOG_LEVEL": "WARNING",
        "LAYERCODE_WEBHOOK_SECRETS": listener_secrets_json(batch),
        "LAYERCODE_RESULT_WEBHOOKS": json.dumps([{"url": receiver_server.url + "/results", "secret": secret}]),
    }
    if stub_server:
        extra |= {"OPENAI_API_KEY": stub.api_key, "OPENAI_BASE_URL": stub_server.url + "/v1"}
    env = pipeline_env(home, data, **extra)
    listener, daemon, port, started, code_server = start_listener_and_daemon(root, env)
    acked: dict[str, float] = {}
    try:
        wait_healthy(f"http://127.0.0.1:{port}/healthz")
        with dg.DagsterInstance.from_config(str(home)) as instance:
            wait_first_ingest(instance, daemon, root, 0.5)
            startup_s = time.time() - started
            print(
                f"[{provider}] Dagster start-up (daemon + code location + first run), not counted: {startup_s:.1f} s",
                flush=True,
            )

            def on_event(attempt) -> None:
                if attempt.event_type == SESSION_END and attempt.status == 200:
                    acked[attempt.session_id] = time.time()

            url = f"http://127.0.0.1:{port}/agents/{{agent_id}}/webhook"
            # steady traffic: a call starts every `interval` seconds, each on its own thread
            threads = []
            for session in batch.sessions:
                one = SimBatch(batch.seed, batch.agents, [session])
                t = threading.Thread(
                    target=lambda b=one: asyncio.run(
                        Deliverer(b, url, faults={}, concurrency=1, pace_s=0.05, on_event=on_event).run()
                    )
                )
                t.start()
                threads.append(t)
                time.sleep(interval)
            for t in threads:
                t.join()
            deadline = time.time() + 300
            while time.time() < deadline:
                got = {r.session_id for r in receiver.unique(CALL_ANALYZED).values()}
                if set(acked) <= got:
                    break
                time.sleep(0.5)
            runs = instance.get_runs(dg.RunsFilter(job_name="ingest_job", statuses=[dg.DagsterRunStatus.SUCCESS]))
    finally:
        stop_processes(daemon, code_server, listener)
        receiver_server.stop()
        if stub_server:
            stub_server.stop()
    arrived = {r.session_id: r.received_at for r in receiver.unique(CALL_ANALYZED).values()}
    lags = [arrived[s] - t for s, t in acked.items() if s in arrived]
    return {
        "provider": provider,
        "acked": len(acked),
        "lags": lags,
        "missing": len(set(acked) - set(arrived)),
        "rejected": receiver.rejected,
        "duplicates": len(receiver.received) - len(receiver.unique()),
        "runs": len(runs),
        "llm_requests": len(stub.requests) if stub else 0,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=30)
    ap.add_argument("--interval", type=float, default=3.0, help="seconds between calls (steady traffic)")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--only", choices=["offline", "openai"], default=None)
    args = ap.parse_args()
    goals = {"offline": 15.0, "openai": 20.0}
    results = [measure(p, args.calls, args.interval, args.seed) for p in goals if args.only in (None, p)]
    print("\nsession.end acknowledged -> call.analyzed received (verified with the standardwebhooks package)")
    print(
        f"  traffic: {args.calls} calls, one every {args.interval:g} s, on {Path('/proc/cpuinfo').read_text().count('processor')} cores"
    )
    for r in results:
        lags = r["lags"]
        extra = f", {r['llm_requests']} LLM requests at 1 s each" if r["provider"] == "openai" else ""
        print(
            f"  [{r['provider']}] measured {len(lags)} of {r['acked']} ({r['missing']} never arrived), "
            f"{r['rejected']} signatures rejected, {r['duplicates']} duplicate deliveries, "
            f"{r['runs']} ingest runs{extra}"
        )
        if lags:
            print(
                f"  [{r['provider']}] p50 {percentile(lags, 0.5):.1f} s, p95 {percentile(lags, 0.95):.1f} s, "
                f"max {max(lags):.1f} s"
            )
    for r in results:
        p95 = percentile(r["lags"], 0.95) if r["lags"] else float("inf")
        goal = goals[r["provider"]]
        print(f"{r['provider']} p95 {p95:.1f} s (goal <= {goal:.0f} s): {'met' if p95 <= goal else 'NOT met'}")


if __name__ == "__main__":
    main()
