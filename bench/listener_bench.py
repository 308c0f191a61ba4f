"""Listener throughput against a bare Starlette endpoint, same load generator, same run.

    .venv/bin/python bench/listener_bench.py [--duration 8] [--connections 64] [--rounds 3] [--workers 1]

Prints requests/s, p50 and p99 for both, the ratio, and acknowledged vs landed counts;
then the simulator's own delivery rate against the listener (exact acknowledged == landed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PY, ROOT, ensure_wrk, parse_wrk, start, wait_healthy  # noqa: E402

from layercode_pipeline.contract.signing import sign  # noqa: E402
from layercode_pipeline.landing.segments import iter_sealed_segments, recover_orphan_segments  # noqa: E402
from layercode_pipeline.simulator import deliver, generate_batch, listener_secrets_json  # noqa: E402
from layercode_pipeline.simulator.server import free_port  # noqa: E402

SECRET = "whsec_bench"
LUA = """
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["content-type"] = "application/json"
wrk.headers["layercode-signature"] = os.getenv("BENCH_SIG")
"""


def run_wrk(wrk: str, url: str, body: bytes, duration: int, connections: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(LUA)
    env = {**os.environ, "BENCH_BODY": body.decode(), "BENCH_SIG": sign(body, SECRET)}
    out = subprocess.run(
        [wrk, "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "-s", fh.name, url],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return parse_wrk(out)


def landed_lines(landing: Path) -> int:
    recover_orphan_segments(landing)
    return sum(p.read_bytes().count(b"\n") for p in iter_sealed_segments(landing))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="bare and listener runs alternate this many times (the machines here drift)",
    )
    ap.add_argument("--workers", type=int, default=1, help="uvicorn worker processes, the same for both")
    args = ap.parse_args()
    wrk = ensure_wrk()
    session = generate_batch(1, seed=1).sessions[0]
    body = json.dumps(session.session_end()).encode()  # a realistic ~1.5 KB session.end
    print(
        f"body: session.end, {len(body)} bytes; wrk -t2 -c{args.connections} -d{args.duration}s; "
        f"{args.rounds} alternating rounds; {args.workers} worker process(es) each"
    )

    # Both servers stay up for the whole run; the idle one costs nothing. Alternating the
    # runs spreads the host's drift over both sides instead of one.
    bare_port, port = free_port(), free_port()
    data = Path(tempfile.mkdtemp(prefix="listener-bench-"))
    bare = start(
        [
            PY,
            "-m",
            "uvicorn",
            "bare_app:app",
            "--port",
            str(bare_port),
            "--no-access-log",
            "--log-level",
            "warning",
            "--app-dir",
            str(ROOT / "bench"),
            "--workers",
            str(args.workers),
        ]
    )
    listener = start(
        [PY, "-m", "layercode_pipeline.cli", "listen", "--port", str(port), "--workers", str(args.workers)],
        env={"LAYERCODE_DATA_DIR": str(data), "LAYERCODE_WEBHOOK_SECRET": SECRET},
    )
    rows: list[tuple[int, dict, dict]] = []
    try:
        wait_healthy(f"http://127.0.0.1:{bare_port}/healthz")
        wait_healthy(f"http://127.0.0.1:{port}/healthz")
        # warm-up, not in the figures (first-touch costs); its acknowledgements count below
        run_wrk(wrk, f"http://127.0.0.1:{bare_port}/webhook", body, 2, args.connections)
        warmup = run_wrk(wrk, f"http://127.0.0.1:{port}/webhook", body, 2, args.connections)
        for rnd in range(1, args.rounds + 1):
            base = run_wrk(wrk, f"http://127.0.0.1:{bare_port}/webhook", body, args.duration, args.connections)
            ours = run_wrk(wrk, f"http://127.0.0.1:{port}/webhook", body, args.duration, args.connections)
            rows.append((rnd, base, ours))
        time.sleep(0.5)
        health = httpx.get(f"http://127.0.0.1:{port}/healthz").json() if args.workers == 1 else None
    finally:
        bare.terminate()
        listener.terminate()
        bare.wait()
        listener.wait()
    landed = landed_lines(data / "landing")

    print(
        f"{'round':<7}{'bare req/s':>12}{'p50 ms':>9}{'p99 ms':>9}{'listener req/s':>16}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'ratio':>8}"
    )
    for rnd, base, ours in rows:
        print(
            f"{rnd:<7}{base['rps']:>12.0f}{base['p50_ms']:>9.2f}{base['p99_ms']:>9.2f}{ours['rps']:>16.0f}"
            f"{ours['p50_ms']:>9.2f}{ours['p99_ms']:>9.2f}{ours['rps'] / base['rps']:>7.2f}x"
        )
    med = statistics.median
    bare_rps, our_rps = med(b["rps"] for _, b, _ in rows), med(o["rps"] for _, _, o in rows)
    our_p99 = med(o["p99_ms"] for _, _, o in rows)
    print(
        f"{'median':<7}{bare_rps:>12.0f}{med(b['p50_ms'] for _, b, _ in rows):>9.2f}"
        f"{med(b['p99_ms'] for _, b, _ in rows):>9.2f}{our_rps:>16.0f}{med(o['p50_ms'] for _, _, o in rows):>9.2f}"
        f"{our_p99:>9.2f}{our_rps / bare_rps:>7.2f}x"
    )
    paired = med(o["rps"] / b["rps"] for _, b, o in rows)
    print(
        f"throughput ratio listener/bare: median of the paired rounds {paired:.2f}x, ratio of the medians "
        f"{our_rps / bare_rps:.2f}x (target >= 0.5x)"
    )
    print(
        f"listener p99 median {our_p99:.1f} ms, worst round {max(o['p99_ms'] for _, _, o in rows):.1f} ms "
        "(target <= 20 ms)"
    )
    if health:
        print(
            f"group commit: {health['landed']} events in {health['fsync_groups']} fsyncs "
            f"({health['landed'] / max(1, health['fsync_groups']):.1f} events per fsync; "
            f"{health['fsync_groups_in_thread']} synced in the worker thread; recent write+fsync "
            f"{health['fsync_ms_avg']} ms)"
        )
    acked = sum(o["requests"] - o["non2xx"] for _, _, o in [*rows, (0, None, warmup)])
    print(
        f"wrk (rounds and warm-up): {sum(o['requests'] for _, _, o in [*rows, (0, None, warmup)])} responses, {sum(o['non2xx'] for _, _, o in rows)} non-2xx, "
        f"socket errors: {', '.join(sorted({o['socket_errors'] for _, _, o in rows}))}"
    )
    print(
        f"acknowledged (2xx seen by wrk) {acked}, landed {landed}; landed - acknowledged = {landed - acked} "
        f"(requests still in flight when wrk stopped are landed but their answers are not counted)"
    )

    # The simulator against the listener: every request completes, so the counts must match exactly.
    batch = generate_batch(1500, seed=2)
    data2 = Path(tempfile.mkdtemp(prefix="sim-bench-"))
    port = free_port()
    listener = start(
        [PY, "-m", "layercode_pipeline.cli", "listen", "--port", str(port)],
        env={"LAYERCODE_DATA_DIR": str(data2), "LAYERCODE_WEBHOOK_SECRETS": listener_secrets_json(batch)},
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/healthz")
        report = deliver(batch, f"http://127.0.0.1:{port}/agents/{{agent_id}}/webhook", concurrency=64)
    finally:
        listener.terminate()
        listener.wait()
    landed2 = landed_lines(data2 / "landing")
    s = report.summary()
    print(
        f"simulator -> listener: {s['sent']} events in {s['elapsed_s']} s = {s['events_per_s']} events/s "
        f"(SSE replies read to the end: {s['sse_complete']}/{s['sse_replies']}); "
        f"acknowledged {s['acknowledged']}, landed {landed2}, equal: {s['acknowledged'] == landed2}"
    )
    print(
        f"simulator rate vs listener rate under wrk: {s['events_per_s'] / our_rps:.2f}x "
        "(the simulator shares the 2 cores with the listener here, and reads every SSE reply)"
    )


if __name__ == "__main__":
    main()
