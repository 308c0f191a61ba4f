"""Freshness: how long from a call's `session.end` being acknowledged to its row being readable
in `serving/analytics.duckdb`, with the project's own automation on a real Dagster instance.

    .venv/bin/python bench/freshness_bench.py [--calls 30] [--wave 5] [--gap 30]
    .venv/bin/python bench/freshness_bench.py --steady [--history 1000000] [--interval 3] [--minutes 10]

What runs: the code server and `dagster-daemon` over deploy/workspace.yaml, as deploy/ runs
them, with the instance config the demo writes (its sensors are on by default), `layercode-pipeline listen` at its defaults (a segment seals after
1 s without an event), and the simulator delivering calls in waves of `--wave` calls every
`--gap` seconds, a realistic pattern with quiet spells. Nobody launches a run: the landing
sensor does. Dagster's own start-up (the daemon, the code location, the first run on a fresh
instance) happens before the first call and is printed on its own, not counted.

--steady (issue 27): the production instance (deploy/dagster.yaml, its Postgres `storage:`
replaced by SQLite for one host), a warehouse with `--history` sessions already landed (built
by bench/_history.py) and the hourly assets' first run over it done (their catch-up is not
steady traffic; their hourly run, if it falls in the window, is), and one call every
`--interval` seconds for `--minutes` minutes, with no quiet spell. The first run (Dagster's start-up and the first build of the whole history) ends
before the first call and is printed on its own, not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import dagster as dg
import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    dagster_home,
    percentile,
    pipeline_env,
    production_home,
    start_listener_and_daemon,
    stop_processes,
    wait_first_ingest,
    wait_healthy,
)
from _history import build_history, catch_up_hourly  # noqa: E402

from layercode_pipeline.contract.events import SESSION_END  # noqa: E402
from layercode_pipeline.simulator import Deliverer, default_agents, generate_batch, listener_secrets_json  # noqa: E402
from layercode_pipeline.simulator.generate import SimBatch  # noqa: E402


def watch_serving(path: Path, seen: dict[str, float], stop: threading.Event, since: float = 0.0) -> None:
    """Poll the serving copy (a BI tool's view) and note when each session first appears (of
    the sessions built after `since`, a Unix time: a long history is not re-read every poll)."""
    while not stop.is_set():
        if path.exists():
            try:
                con = duckdb.connect(str(path), read_only=True)
                try:
                    now = time.time()
                    recent = "where built_at >= to_timestamp(?)" if since else "where ? = 0"
                    for (sid,) in con.execute(
                        f"select session_id from marts.fct_sessions {recent}", [since]
                    ).fetchall():
                        seen.setdefault(sid, now)
                finally:
                    con.close()
            except duckdb.Error:
                pass  # replaced while opening: the next poll reads the new one
        time.sleep(0.5)


def steady(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="freshness-steady-"))
    data = root / "data"
    data.mkdir()
    print(f"history: {args.history:,} sessions in {data}", flush=True)
    build_history(data, args.history)
    shutil.rmtree(data / "seed")
    catch_up_hourly(data)
    home = production_home(root)
    calls = int(args.minutes * 60 / args.interval)
    batch = generate_batch(calls, seed=99, agents=default_agents(7), reconnect_rate=0.0)
    env = pipeline_env(
        home, data, LAYERCODE_LOG_LEVEL="WARNING", LAYERCODE_WEBHOOK_SECRETS=listener_secrets_json(batch)
    )
    listener, daemon, port, started, code_server = start_listener_and_daemon(root, env)
    seen: dict[str, float] = {}
    acked: dict[str, float] = {}
    stop = threading.Event()
    try:
        wait_healthy(f"http://127.0.0.1:{port}/healthz")
        with dg.DagsterInstance.from_config(str(home)) as instance:
            wait_first_ingest(instance, daemon, root, 1)
            print(
                f"Dagster start-up and the first run (the whole history built and published), not counted: "
                f"{time.time() - started:.0f} s",
                flush=True,
            )
            traffic_started = time.time()
            watcher = threading.Thread(
                target=watch_serving,
                args=(data / "serving" / "analytics.duckdb", seen, stop, traffic_started - 1),
                daemon=True,
            )
            watcher.start()

            def on_event(attempt) -> None:
                if attempt.event_type == SESSION_END and attempt.status == 200:
                    acked[attempt.session_id] = time.time()

            url = f"http://127.0.0.1:{port}/agents/{{agent_id}}/webhook"
            for i, session in enumerate(batch.sessions):
                time.sleep(max(0.0, traffic_started + i * args.interval - time.time()))
                one = SimBatch(batch.seed, batch.agents, [session])
                asyncio.run(Deliverer(one, url, faults={}, concurrency=1, pace_s=0.05, on_event=on_event).run())
                if (i + 1) % 20 == 0:
                    print(
                        f"  {i + 1} calls delivered, {len(set(acked) & set(seen))} seen in the serving copy", flush=True
                    )
            deadline = time.time() + 300
            while not set(acked) <= set(seen) and time.time() < deadline:
                time.sleep(0.5)
            runs = [
                r
                for r in instance.get_runs(dg.RunsFilter(job_name="ingest_job", statuses=[dg.DagsterRunStatus.SUCCESS]))
                if r.run_id
            ]
            steps: dict[str, list[float]] = {}
            durations = []
            for run in runs:
                stats = instance.get_run_stats(run.run_id)
                if not (stats.start_time and stats.end_time) or stats.start_time < traffic_started:
                    continue
                durations.append(stats.end_time - stats.start_time)
                for step in instance.get_run_step_stats(run.run_id):
                    if step.start_time and step.end_time:
                        steps.setdefault(step.step_key, []).append(step.end_time - step.start_time)
    finally:
        stop.set()
        stop_processes(daemon, code_server, listener)
    lags = [seen[s] - t for s, t in acked.items() if s in seen]
    missing = len(set(acked) - set(seen))
    print(f"\nruns during the traffic: {len(durations)}, median {percentile(durations, 0.5):.1f} s from start to end")
    for key, values in sorted(steps.items(), key=lambda kv: -percentile(kv[1], 0.5)):
        print(f"  step {key:<28} median {percentile(values, 0.5):5.1f} s")
    print(
        f"steady traffic: one call every {args.interval:g} s for {args.minutes:g} min after a history of "
        f"{args.history:,} sessions (production instance, SQLite storage)"
    )
    print(f"  calls measured {len(lags)} of {len(acked)} acknowledged ({missing} never seen)")
    print("freshness: session.end acknowledged -> row in serving/analytics.duckdb")
    print(f"  p50 {percentile(lags, 0.5):.1f} s   p95 {percentile(lags, 0.95):.1f} s   max {max(lags):.1f} s")
    print(f"  goal p95 <= 30 s: {'met' if percentile(lags, 0.95) <= 30 else 'NOT met'}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steady", action="store_true", help="steady traffic after a large history (issue 27)")
    ap.add_argument("--history", type=int, default=1_000_000, help="--steady: sessions of history")
    ap.add_argument("--interval", type=float, default=3.0, help="--steady: seconds between calls")
    ap.add_argument("--minutes", type=float, default=10.0, help="--steady: minutes of traffic")
    ap.add_argument("--calls", type=int, default=30)
    ap.add_argument("--wave", type=int, default=5, help="calls per wave")
    ap.add_argument("--gap", type=float, default=30.0, help="seconds between waves")
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args()
    if args.steady:
        steady(args)
        return

    root = Path(tempfile.mkdtemp(prefix="freshness-"))
    data = root / "data"
    data.mkdir()
    home = dagster_home(root)
    batch = generate_batch(args.calls, seed=args.seed)
    env = pipeline_env(
        home, data, LAYERCODE_LOG_LEVEL="WARNING", LAYERCODE_WEBHOOK_SECRETS=listener_secrets_json(batch)
    )
    listener, daemon, port, started, code_server = start_listener_and_daemon(root, env)
    seen: dict[str, float] = {}
    stop = threading.Event()
    watcher = threading.Thread(
        target=watch_serving, args=(data / "serving" / "analytics.duckdb", seen, stop), daemon=True
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/healthz")
        with dg.DagsterInstance.from_config(str(home)) as instance:
            # Dagster's start-up: the daemon, the code location and the first (heartbeat) run
            wait_first_ingest(instance, daemon, root, 0.5)
            startup_s = time.time() - started
            print(
                f"Dagster start-up (daemon + code location + first run on a fresh instance), not counted: "
                f"{startup_s:.1f} s",
                flush=True,
            )
            watcher.start()
            acked: dict[str, float] = {}

            def on_event(attempt) -> None:
                if attempt.event_type == SESSION_END and attempt.status == 200:
                    acked[attempt.session_id] = time.time()

            url = f"http://127.0.0.1:{port}/agents/{{agent_id}}/webhook"
            for i in range(0, len(batch.sessions), args.wave):
                wave = SimBatch(batch.seed, batch.agents, batch.sessions[i : i + args.wave])
                asyncio.run(
                    Deliverer(wave, url, faults={}, concurrency=args.wave, pace_s=0.05, on_event=on_event).run()
                )
                print(f"  wave {i // args.wave + 1}: {len(wave.sessions)} calls delivered", flush=True)
                if i + args.wave < len(batch.sessions):
                    time.sleep(args.gap)
            deadline = time.time() + 300
            while not set(acked) <= set(seen) and time.time() < deadline:
                time.sleep(0.5)
            runs = instance.get_runs(dg.RunsFilter(job_name="ingest_job", statuses=[dg.DagsterRunStatus.SUCCESS]))
            durations = []
            for run in runs:
                stats = instance.get_run_stats(run.run_id)
                if stats.start_time and stats.end_time:
                    durations.append(stats.end_time - stats.start_time)
    finally:
        stop.set()
        stop_processes(daemon, code_server, listener)
    lags = [seen[s] - t for s, t in acked.items() if s in seen]
    missing = len(set(acked) - set(seen))
    print("\nfreshness: session.end acknowledged -> the session's row readable in serving/analytics.duckdb")
    print(
        f"  traffic             {args.calls} calls ({len(acked)} sessions) in waves of {args.wave} every {args.gap:.0f} s"
    )
    print(f"  calls measured      {len(lags)} (of {len(acked)} acknowledged; {missing} never seen)")
    print(f"  p50                 {percentile(lags, 0.5):.1f} s")
    print(f"  p95                 {percentile(lags, 0.95):.1f} s")
    print(f"  max                 {max(lags):.1f} s")
    print(
        f"  ingest runs         {len(runs)} (sensor-launched, in-process executor), "
        f"median run {percentile(durations, 0.5):.1f} s from start to end"
    )
    print(f"  goal p95 <= 30 s:   {'met' if percentile(lags, 0.95) <= 30 else 'NOT met'}")


if __name__ == "__main__":
    main()
