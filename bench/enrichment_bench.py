"""Enrichment concurrency: 1,000 transcripts against a local OpenAI-compatible server that
answers after 300 ms, at concurrency 16, through the real openai client.

    .venv/bin/python bench/enrichment_bench.py [--transcripts 1000 --delay 0.3 --concurrency 16]

Prints the time and its ratio to the ideal (n x delay / concurrency), then a second run's
request count (zero: everything is cached).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import wait_healthy  # noqa: E402

from layercode_pipeline.lib.enrichment.analysis import EnrichmentSettings, build_analysis_model, schema_version  # noqa: E402
from layercode_pipeline.lib.enrichment.providers import OpenAIProvider  # noqa: E402
from layercode_pipeline.lib.enrichment.run import enrich_sessions  # noqa: E402
from layercode_pipeline.lib.warehouse import Warehouse  # noqa: E402
from layercode_pipeline.simulator import generate_batch  # noqa: E402
from layercode_pipeline.simulator.server import free_port  # noqa: E402

SERVER = r"""
import sys, uvicorn
from starlette.responses import JSONResponse
from starlette.routing import Route
from layercode_pipeline.simulator.llm import OpenAIStub
stub = OpenAIStub(api_key="sk-bench", delay_s=float(sys.argv[2]))
async def count(request):
    return JSONResponse({"requests": len(stub.requests)})
stub.app.router.routes.append(Route("/count", count))
uvicorn.run(stub.app, port=int(sys.argv[1]), log_level="warning", access_log=False)
"""


def seed_warehouse(path: Path, n: int) -> None:
    """n sessions with distinct transcripts, as raw session.end events."""
    sessions = generate_batch(n, seed=12).sessions[:n]
    rows = []
    for i, s in enumerate(sessions):
        body = s.session_end()
        body["transcript"][-1]["text"] += f" (ref {i})"  # distinct: the cache is content-addressed
        raw = orjson.dumps(body)
        rows.append(
            (
                f"k{i}",
                datetime.now(UTC),
                s.agent_id,
                "session.end",
                hashlib.sha256(raw).hexdigest(),
                s.session_id,
                s.conversation_id,
                None,
                raw.decode(),
                None,
                "bench",
                "webhook",
                "bench",
                datetime.now(UTC),
                f"k{i}",
            )
        )
    with Warehouse.at(path, data_dir=path.parent).open_for_writing() as con:
        con.executemany(
            """insert into raw.layercode_events (event_key, received_at, agent_id, event_type, content_sha256,
                               session_id, conversation_id, turn_id, body, validation_error, writer_id, source,
                               source_file, ingested_at, event_key_md5)
                           values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, md5_number(?))""",
            rows,
        )


async def run(base: str, path: Path, concurrency: int):
    settings = EnrichmentSettings.load()
    schema = build_analysis_model(settings)
    provider = OpenAIProvider(settings, schema, api_key="sk-bench", model="gpt-5-mini", base_url=base, max_retries=2)
    try:
        with Warehouse.at(path, data_dir=path.parent).open_for_writing() as con:
            t = time.perf_counter()
            stats = await enrich_sessions(con, provider, settings, schema_version(schema), concurrency=concurrency)
            return stats, time.perf_counter() - t
    finally:
        await provider.aclose()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--transcripts", type=int, default=1000)
    ap.add_argument("--delay", type=float, default=0.3)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    path = Path(tempfile.mkdtemp(prefix="enrich-bench-")) / "warehouse.duckdb"
    seed_warehouse(path, args.transcripts)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port), str(args.delay)])
    try:
        wait_healthy(f"http://127.0.0.1:{port}/count")
        stats, elapsed = asyncio.run(run(f"http://127.0.0.1:{port}/v1", path, args.concurrency))
        ideal = args.transcripts * args.delay / args.concurrency
        print(
            f"first run: {stats.enriched} enriched, {stats.failed} failed, {stats.calls} requests in {elapsed:.2f} s; "
            f"ideal {ideal:.2f} s ({args.transcripts} x {args.delay} s / {args.concurrency}); "
            f"ratio {elapsed / ideal:.3f}x (target <= 1.2x)"
        )
        before = httpx.get(f"http://127.0.0.1:{port}/count").json()["requests"]
        stats2, elapsed2 = asyncio.run(run(f"http://127.0.0.1:{port}/v1", path, args.concurrency))
        after = httpx.get(f"http://127.0.0.1:{port}/count").json()["requests"]
        print(f"second run: {after - before} requests to the server, {stats2.cached} cached, {elapsed2:.2f} s")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
