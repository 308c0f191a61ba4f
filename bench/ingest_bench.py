"""Ingest throughput: 1,000,000 Layercode-shaped events in landing segments (~0.5 GB).

    .venv/bin/python bench/ingest_bench.py [--events 1000000]

(a) DuckDB alone: read_ndjson_objects into a table (the engine's floor);
(b) the raw_layercode_events asset's full ingest (dg.materialize);
(c) an incremental run after adding 1% more events.
Each step runs in its own process. Segments are generated in a staging area; an ingest
process first runs once with nothing new (Dagster's one-off start-up, printed apart), then
the segments are renamed into the landing area as a listener seals them and the measured
run starts. Prints times, ratios and each step's peak RSS.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from layercode_pipeline.contract.landing import build_envelope
from layercode_pipeline.simulator import generate_batch

STEP = r"""
import json, os, resource, sys, time
from pathlib import Path
step, data, files = sys.argv[1], Path(sys.argv[2]), [Path(f) for f in sys.argv[3:]]
t0 = time.perf_counter()
if step == "floor":
    import duckdb
    con = duckdb.connect(str(data / "floor.duckdb"))
    con.execute("create table t as select * from read_ndjson_objects(?)", [[str(f) for f in files]])
    rows = con.execute("select count(*) from t").fetchone()[0]
    con.close()
    out = {"seconds": time.perf_counter() - t0, "rows": rows}
else:
    import dagster as dg
    from layercode_pipeline.defs.ingest.assets import raw_layercode_events
    from layercode_pipeline.defs.resources import StorageResource
    storage = StorageResource(data_dir=str(data))
    config = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    # one instance for both runs, as a deployment has; in memory, so its sqlite is not measured
    instance = dg.DagsterInstance.ephemeral()
    imported = time.perf_counter()
    dg.materialize([raw_layercode_events], resources={"storage": storage}, run_config=config,
                   instance=instance)  # nothing new yet
    warmed = time.perf_counter()
    # the staged segments appear in the landing area the way a listener seals them: by rename
    for f in files:
        target = storage.paths.landing / f.relative_to(data / "staged")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(f, target)
    t1 = time.perf_counter()
    r = dg.materialize([raw_layercode_events], resources={"storage": storage}, run_config=config, instance=instance)
    run = time.perf_counter() - t1
    mat = r.asset_materializations_for_node("raw_layercode_events")[0]
    out = {"run": run, "rows": mat.metadata["rows_inserted"].value, "in_asset": mat.metadata["ingest_seconds"].value,
           "imports": imported - t0, "first_run": warmed - imported}
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def write_segments(
    landing: Path, start: int, count: int, per_file: int, templates: list[tuple[str, bytes, str]], prefix: str
) -> list[Path]:
    base = datetime(2026, 11, 20, 9, tzinfo=UTC)
    files = []
    n = start
    seq = 0
    while n < start + count:
        seq += 1
        received = base + timedelta(seconds=n // 500)
        part = landing / f"dt={received:%Y-%m-%d}" / f"hour={received:%H}"
        part.mkdir(parents=True, exist_ok=True)
        path = part / f"{prefix}-{seq:06d}.jsonl"
        lines = []
        for i in range(n, min(n + per_file, start + count)):
            event_type, body, sid = templates[i % len(templates)]
            body = body.replace(sid.encode(), f"{sid[:-8]}{i // len(templates):08x}".encode())
            lines.append(
                build_envelope(
                    received_at=received,
                    agent_id="ag_support",
                    event_type=event_type,
                    content_sha256=hashlib.sha256(body).hexdigest(),
                    body=body,
                    headers={"user-agent": "Layercode-Webhooks/1.0"},
                    writer_id=prefix,
                )
            )
        path.write_bytes(b"".join(lines))
        files.append(path)
        n += per_file
    return files


def run_step(step: str, data: Path, files: list[Path]) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", STEP, step, str(data), *map(str, files)], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--per-file", type=int, default=50_000)
    args = ap.parse_args()
    data = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    batch = generate_batch(400, seed=3)
    templates = []
    for s in batch.sessions:
        for e in [s.session_start(), *s.messages(), s.session_end()] + (
            [s.session_update()] if s.session_update() else []
        ):
            templates.append((e["type"], orjson.dumps(e), s.session_id))
    t0 = time.perf_counter()
    files = write_segments(data / "staged", 0, args.events, args.per_file, templates, "w1")
    size = sum(f.stat().st_size for f in files)
    print(
        f"generated {args.events:,} events in {len(files)} segments, {size / 1e6:.0f} MB "
        f"({time.perf_counter() - t0:.1f} s)"
    )

    a = run_step("floor", data, files)
    b = run_step("ingest", data, files)
    more = write_segments(data / "staged", args.events, args.events // 100, args.per_file, templates, "w2")
    c = run_step("ingest", data, more)
    print("step                                      Dagster run   in asset      rows   peak RSS")
    print(
        f"(a) DuckDB read_ndjson_objects -> table : {a['seconds']:9.2f} s {a['seconds']:8.2f} s "
        f"{a['rows']:>9,} {a['peak_rss_mb']:7.0f} MB"
    )
    for label, r in (("(b) raw_layercode_events full ingest    ", b), ("(c) incremental run, +1% events         ", c)):
        print(f"{label}: {r['run']:9.2f} s {r['in_asset']:8.2f} s {r['rows']:>9,} {r['peak_rss_mb']:7.0f} MB")
    fixed = c["imports"] + c["first_run"]
    print(
        f"Dagster run = the dg.materialize call (in-process executor, in-memory instance) in a process that "
        f"has run once; in asset = the asset's own "
        f"timing. A fresh process first pays a fixed {fixed:.2f} s (imports {c['imports']:.2f} s, first "
        f"run with nothing new {c['first_run']:.2f} s) whatever the data."
    )
    print(
        f"(b)/(a): Dagster run {b['run'] / a['seconds']:.2f}x, in asset {b['in_asset'] / a['seconds']:.2f}x, "
        f"fresh process {(b['run'] + fixed) / a['seconds']:.2f}x (target <= 1.5x)"
    )
    print(
        f"(c)/(b): Dagster run {100 * c['run'] / b['run']:.1f}%, in asset {100 * c['in_asset'] / b['in_asset']:.1f}%, "
        f"fresh process {100 * (c['run'] + fixed) / (b['run'] + fixed):.1f}% (target <= 5%)"
    )
    print(f"peak RSS of the ingest processes: {max(b['peak_rss_mb'], c['peak_rss_mb']):.0f} MB (target <= 1536 MB)")


if __name__ == "__main__":
    main()
