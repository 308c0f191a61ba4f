"""dbt build time at 10,000 and 100,000 sessions, and an incremental build after 1% new data.

    .venv/bin/python bench/dbt_bench.py [--sizes 10000 100000]

Raw events come from the simulator's generator, written as landing segments and ingested by
the pipeline's own ingest; dbt then runs exactly as the Dagster asset runs it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from layercode_pipeline.lib.ingest import ingest_landing
from layercode_pipeline.lib.warehouse import Warehouse
from layercode_pipeline.simulator import generate_batch, write_segment

ROOT = Path(__file__).resolve().parents[1]
DBT = str(Path(sys.executable).parent / "dbt")


def land(landing: Path, calls: int, seed: int, name: str) -> int:
    now = datetime(2026, 11, 20, 9, tzinfo=UTC)
    return write_segment(landing, generate_batch(calls, seed=seed), received_at=now, name=name)


def dbt_build(warehouse: Path, target: Path) -> float:
    env = {**os.environ, "LAYERCODE_WAREHOUSE_PATH": str(warehouse)}
    t = time.perf_counter()
    r = subprocess.run(
        [
            DBT,
            "build",
            "--quiet",
            "--project-dir",
            str(ROOT / "dbt_project"),
            "--profiles-dir",
            str(ROOT / "dbt_project"),
            "--target-path",
            str(target),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(r.stdout[-3000:] + r.stderr[-3000:])
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    args = ap.parse_args()
    results = {}
    for calls in args.sizes:
        data = Path(tempfile.mkdtemp(prefix=f"dbt-bench-{calls}-"))
        sessions = land(data / "landing", calls, seed=calls, name="base")
        with Warehouse.at(None, data_dir=data).open_for_writing() as con:
            ingest_landing(con, data / "landing")
        full = dbt_build(data / "warehouse.duckdb", data / "target")
        extra = land(data / "landing", max(1, calls // 100), seed=calls + 1, name="more")
        with Warehouse.at(None, data_dir=data).open_for_writing() as con:
            ingest_landing(con, data / "landing")
        incremental = dbt_build(data / "warehouse.duckdb", data / "target")
        results[calls] = (sessions, full, incremental)
        print(
            f"{calls:>7,} calls ({sessions:,} sessions): full dbt build {full:6.1f} s; "
            f"after +1% ({extra:,} sessions) incremental build {incremental:6.1f} s "
            f"= {100 * incremental / full:.0f}% of full"
        )
    if len(args.sizes) >= 2:
        small, large = args.sizes[0], args.sizes[-1]
        print(
            f"growth: {large // small}x the data took {results[large][1] / results[small][1]:.2f}x the time "
            f"(full builds; dbt's fixed start-up cost is part of both)"
        )


if __name__ == "__main__":
    main()
