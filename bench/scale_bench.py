"""What a run costs on a large history: 1,000,000 sessions, then one new session, then +1%.

    .venv/bin/python bench/scale_bench.py [--sessions 1000000] [--days 365]

The history is built by bench/_history.py (one simulated day through the real ingest and the
offline enrichment, copied back through the calendar in SQL). Then every step runs as its own
process, as the pipeline runs it, and is timed with its peak memory (the process's max RSS,
from wait4):

  full        `dbt build` of everything (the first build), the full test run the schedule
              makes, and a full serving publish (every mart copied, every Parquet file written;
              then the second file of the serving pair);
              then a pipeline run with nothing new (the first: it parses the project, so the
              runs below start warm, as every later run does)
  one session land one call, ingest, enrich, then the run's incremental `dbt build` (its
              models and tests see only the touched sessions and days) and the serving publish
  +1%         the same after 1% new sessions

Goals (issue 27): one new session's dbt work and serving publish each <= 10% of the full one,
and every step under 4 GB RSS. The last lines print them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _history import build_history, land_calls  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
GB = 1024**3

# Each step is the library call the Dagster asset makes, in a fresh process.
INGEST = """
from pathlib import Path
from layercode_pipeline.lib.ingest import ingest_landing
from layercode_pipeline.lib.warehouse import Warehouse
with Warehouse.at(None, data_dir=Path({data!r})).open_for_writing() as con:
    r = ingest_landing(con, Path({data!r}) / "landing")
    print(r.inserted, "events")
"""
ENRICH = """
import sys
sys.path.insert(0, {bench!r})
from pathlib import Path
from _history import enrich_offline
from layercode_pipeline.lib.warehouse import Warehouse
with Warehouse.at(None, data_dir=Path({data!r})).open_for_writing() as con:
    print(enrich_offline(con), "sessions enriched")
"""
DBT = """
import subprocess, sys
from pathlib import Path
from layercode_pipeline.defs.dbt.project import dbt_command
from layercode_pipeline.lib.warehouse import Warehouse
warehouse = Warehouse.at(None, data_dir=Path({data!r}))
args = dbt_command({mode!r}, warehouse.dbt_vars(), Path({data!r}))
r = subprocess.run(args, capture_output=True, text=True)
print(r.stdout[-2500:], r.stderr[-2500:])
sys.exit(r.returncode)
"""
PUBLISH = """
from pathlib import Path
from layercode_pipeline.lib.serving_copy import publish_serving_copy
from layercode_pipeline.lib.warehouse import Warehouse
data = Path({data!r})
stats = publish_serving_copy(Warehouse.at(None, data_dir=data), data / {serving!r})
print(stats)
"""


def step(name: str, code: str, results: dict[str, tuple[float, float]], **params: str) -> float:
    """Run `code` in a fresh Python process; record its wall time and peak RSS (its own and
    its children's, e.g. the dbt process)."""
    t = time.perf_counter()
    proc = subprocess.Popen(
        [PY, "-c", code.format(bench=str(Path(__file__).parent), **params)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{out[-5000:]}")
    rss = usage.ru_maxrss * 1024  # kB on Linux; children that were waited for are included
    results[name] = (elapsed, rss)
    print(f"  {name:<34} {elapsed:7.1f} s   peak {rss / GB:5.2f} GB", flush=True)
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=1_000_000)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--keep", action="store_true", help="keep the data directory (printed)")
    args = ap.parse_args()
    data = Path(tempfile.mkdtemp(prefix="scale-bench-"))
    print(f"building a history of {args.sessions:,} sessions over {args.days} days in {data}", flush=True)
    built = build_history(data, args.sessions, days=args.days)
    shutil.rmtree(data / "seed")
    results: dict[str, tuple[float, float]] = {}
    p = {"data": str(data)}
    print("full:", flush=True)
    step("dbt build (first, whole)", DBT, results, mode="full", **p)
    step("dbt test (scheduled, whole tables)", DBT, results, mode="scheduled_tests", **p)
    step("serving publish (whole)", PUBLISH, results, serving="serving-full", **p)
    # the incremental publish starts from a published pair of files, as in production: the
    # first publish writes one, the second (nothing new) makes the other from a copy of it
    step("serving publish (first)", PUBLISH, results, serving="serving", **p)
    step("serving publish (second: the pair)", PUBLISH, results, serving="serving", **p)
    # and a pipeline run starts from dbt's parse state of the run before it (data/dbt/run): the
    # first run after a deployment parses the project once; this one (nothing new) does that,
    # so the one-session run below starts warm, as every later run does
    step("dbt run, nothing new (first: parses)", DBT, results, mode="run", **p)
    now = datetime.now(UTC).replace(microsecond=0)
    for label, calls in (("one session", 1), ("+1%", max(1, round(built["sessions"] / 100 / 1.12)))):
        land_calls(data / "landing", calls, seed=11 + calls, base_time=now, name=f"new-{calls}")
        print(f"{label}:", flush=True)
        step(f"{label}: ingest", INGEST, results, **p)
        step(f"{label}: enrichment", ENRICH, results, **p)
        step(f"{label}: dbt build (incremental)", DBT, results, mode="run", **p)
        step(f"{label}: serving publish", PUBLISH, results, serving="serving", **p)
    full_dbt = results["dbt build (first, whole)"][0]
    full_pub = results["serving publish (whole)"][0]
    one_dbt = results["one session: dbt build (incremental)"][0]
    one_pub = results["one session: serving publish"][0]
    pct_dbt, pct_pub = 100 * one_dbt / full_dbt, 100 * one_pub / full_pub
    pct_dbt_1 = 100 * results["+1%: dbt build (incremental)"][0] / full_dbt
    peak = max(rss for _, rss in results.values())
    size = (data / "warehouse.duckdb").stat().st_size
    summary = {
        "sessions": built["sessions"],
        "events": built["events"],
        "warehouse_gb": round(size / GB, 2),
        "steps": {k: {"seconds": round(v[0], 2), "peak_rss_gb": round(v[1] / GB, 3)} for k, v in results.items()},
    }
    (data / "scale_bench.json").write_text(json.dumps(summary, indent=2))
    if not args.keep:
        shutil.rmtree(data, ignore_errors=True)
    print(f"history: {built['sessions']:,} sessions, {built['events']:,} events, warehouse {size / GB:.2f} GB")
    print(
        f"dbt: full build {full_dbt:.1f} s; one new session {one_dbt:.1f} s = {pct_dbt:.1f}% of full "
        f"(goal <= 10%: {'met' if pct_dbt <= 10 else 'NOT met'}); +1% {pct_dbt_1:.1f}% of full"
    )
    print(
        f"serving: full publish {full_pub:.1f} s; after one new session {one_pub:.1f} s = {pct_pub:.1f}% of full "
        f"(goal <= 10%: {'met' if pct_pub <= 10 else 'NOT met'})"
    )
    idle = results["dbt run, nothing new (first: parses)"][0]
    print(f"dbt: the first pipeline run, nothing new (it parses the project once) {idle:.1f} s")
    print(f"peak memory of any step: {peak / GB:.2f} GB RSS (goal < 4 GB: {'met' if peak < 4 * GB else 'NOT met'})")


if __name__ == "__main__":
    main()
