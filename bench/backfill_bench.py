"""REST backfill and recording downloads against the simulator's API (in its own process).

    .venv/bin/python bench/backfill_bench.py [--sessions 1500]

Prints session records/s and recordings MB/s at concurrency 1 and 16 and the ratio, then
the peak RSS of a process downloading one 200 MB recording (streamed, so flat).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import wait_healthy  # noqa: E402

from layercode_pipeline.lib.backfill import DetailRequest, fetch_details  # noqa: E402
from layercode_pipeline.lib.layercode_client import LayercodeClient  # noqa: E402
from layercode_pipeline.simulator import generate_batch  # noqa: E402
from layercode_pipeline.simulator.server import free_port  # noqa: E402

KEY = "sk_bench"
SERVER = r"""
import sys, threading
from starlette.responses import Response
from starlette.routing import Route
from layercode_pipeline.simulator import SimulatorAPI, generate_batch
sessions, port, latency = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
batch = generate_batch(sessions, seed=9)
big = batch.sessions[0]
big.duration_ms = 200 * 1024 * 1024 // 16  # 16 bytes per ms at 8 kHz 16-bit: a 200 MB WAV
big.sample_rate, big.wav_format, big.recording_outcome = 8000, "pcm", "completed"
api = SimulatorAPI(api_key="sk_bench", latency_s=latency)
api.register(batch, ready_in_s=0)
api.app.router.routes.append(Route("/healthz", lambda r: Response(b"ok")))
with api.serve(port=port):  # the REST API, and the storage host its recordings redirect to
    threading.Event().wait()
"""
DOWNLOAD_ONE = r"""
import asyncio, json, resource, sys
from pathlib import Path
from layercode_pipeline.lib.layercode_client import LayercodeClient
base, agent, sid, dest = sys.argv[1:5]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
async def main():
    async with LayercodeClient("sk_bench", base) as c:
        return await c.download_recording(agent, sid, Path(dest))
d = asyncio.run(main())
print(json.dumps({"bytes": d.bytes, "status": d.status, "rss_before_mb": before,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


async def details(base: str, reqs: list[DetailRequest], conc: int) -> float:
    async with LayercodeClient(KEY, base, max_concurrency=conc) as client:
        t = time.perf_counter()
        out = await fetch_details(client, reqs)
        elapsed = time.perf_counter() - t
    assert all(o.fetch and o.fetch.status == 200 for o in out)
    return len(reqs) / elapsed


async def downloads(base: str, sessions, conc: int, dest: Path) -> tuple[float, float]:
    from layercode_pipeline.lib.recording_store import LocalRecordingStore, recording_key
    from layercode_pipeline.lib.recordings import PlannedDownload, download_recordings

    store = LocalRecordingStore(dest / f"c{conc}")
    items = [
        PlannedDownload(s.agent_id, s.session_id, recording_key(s.agent_id, s.session_id, "2026-01-01"))
        for s in sessions
    ]
    async with LayercodeClient(KEY, base, max_concurrency=conc) as client:
        t = time.perf_counter()
        rows = await download_recordings(client, store, items)
        elapsed = time.perf_counter() - t
    assert all(r.status == "downloaded" for r in rows), [r.error for r in rows if r.status != "downloaded"][:3]
    total = sum(r.bytes or 0 for r in rows)
    return len(rows) / elapsed, total / elapsed / 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=300)
    ap.add_argument("--recordings", type=int, default=100)
    ap.add_argument(
        "--latency-ms",
        type=float,
        default=50.0,
        help="added to every API answer, standing for the round trip to api.layercode.com",
    )
    args = ap.parse_args()
    print(f"simulated API round trip: {args.latency_ms:g} ms per request")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(args.sessions), str(port), str(args.latency_ms / 1000)]
    )
    base = f"http://127.0.0.1:{port}/v1"
    try:
        wait_healthy(f"http://127.0.0.1:{port}/healthz", timeout=60)
        batch = generate_batch(args.sessions, seed=9)
        reqs = [DetailRequest(s.agent_id, s.session_id, "bench") for s in batch.sessions]
        rec = [s for s in batch.sessions[1:] if s.recording_outcome == "completed"][: args.recordings]
        dest = Path(tempfile.mkdtemp(prefix="backfill-bench-"))
        d1 = asyncio.run(details(base, reqs, 1))
        d16 = asyncio.run(details(base, reqs, 16))
        r1 = asyncio.run(downloads(base, rec, 1, dest))
        r16 = asyncio.run(downloads(base, rec, 16, dest))
        print(
            f"session records: concurrency 1 {d1:7.0f}/s, concurrency 16 {d16:7.0f}/s, ratio {d16 / d1:.2f}x "
            f"({len(reqs)} sessions)"
        )
        mb = sum(s.recording_samples * 2 + 44 for s in rec) / 1e6
        print(
            f"recordings ({len(rec)} WAVs, {mb:.0f} MB): concurrency 1 {r1[0]:6.1f}/s {r1[1]:6.1f} MB/s, "
            f"concurrency 16 {r16[0]:6.1f}/s {r16[1]:6.1f} MB/s, ratio {r16[1] / r1[1]:.2f}x"
        )
        big = batch.sessions[0]
        out = subprocess.run(
            [sys.executable, "-c", DOWNLOAD_ONE, base, big.agent_id, big.session_id, str(dest / "big.wav")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        one = json.loads(out.strip().splitlines()[-1])
        print(
            f"one {one['bytes'] / 1024 / 1024:.0f} MiB recording ({one['status']}): process RSS {one['rss_before_mb']:.0f} MB "
            f"before, peak {one['peak_rss_mb']:.0f} MB: the body streams to disk, memory does not grow with it"
        )
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
