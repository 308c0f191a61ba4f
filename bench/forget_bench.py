"""What forgetting one caller costs on a large warehouse, against rebuilding it.

    .venv/bin/python bench/forget_bench.py [--sessions 100000] [--days 365]

The history is bench/_history.py's (one simulated day through the real ingest and offline
enrichment, copied back through the calendar), built into marts by `dbt build` and published
to the serving copy. Then, each in a fresh process, timed with its peak memory:

  forget one session        `layercode-pipeline forget --session-id <one session>`
  forget one phone number   `layercode-pipeline forget --phone-number <a caller>` (the history
                            repeats the seed day's callers, so this number has a call on every
                            day: a frequent caller, one session a day)
  rebuild (the baseline)    what erasing by rebuilding would take: `dbt build --full-refresh`
                            and a whole serving publish, measured in the same run

Goal (issue 29): forgetting one caller on 100,000 sessions takes seconds, not a full rebuild.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _history import build_history  # noqa: E402
from scale_bench import DBT, PUBLISH, step  # noqa: E402

FORGET = """
import os, subprocess, sys
r = subprocess.run([sys.executable, "-m", "layercode_pipeline.cli", "forget", {flag!r}, {value!r}],
                   env={{**os.environ, "LAYERCODE_DATA_DIR": {data!r}, "COLUMNS": "200"}}, capture_output=True, text=True)
print(r.stdout[-3000:], r.stderr[-3000:])
sys.exit(r.returncode)
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=100_000)
    ap.add_argument("--days", type=int, default=365)
    args = ap.parse_args()
    data = Path(tempfile.mkdtemp(prefix="forget-bench-"))
    print(f"building a history of {args.sessions:,} sessions over {args.days} days in {data}", flush=True)
    built = build_history(data, args.sessions, days=args.days)
    shutil.rmtree(data / "seed")
    results: dict[str, tuple[float, float]] = {}
    p = {"data": str(data)}
    step("dbt build (whole)", DBT, results, mode="full", **p)
    step("serving publish (whole)", PUBLISH, results, serving="serving", **p)
    import duckdb

    con = duckdb.connect(str(data / "warehouse.duckdb"), read_only=True)
    session = con.execute("select min(session_id) from marts.fct_sessions where from_phone_number is null").fetchone()[
        0
    ]
    phone, calls = con.execute(
        "select from_phone_number, count(*) from marts.fct_sessions where from_phone_number is not null "
        "group by 1 order by 2, 1 limit 1"
    ).fetchone()
    con.close()
    print(f"erasing: one session ({session}), then one caller's {calls} sessions", flush=True)
    one = step("forget one session", FORGET, results, flag="--session-id", value=session, **p)
    caller = step(
        f"forget one phone number ({calls} sessions)", FORGET, results, flag="--phone-number", value=phone, **p
    )
    rebuild = step("rebuild: dbt build --full-refresh", DBT, results, mode="full", **p)
    rebuild += step("rebuild: serving publish (whole)", PUBLISH, results, serving="serving-rebuilt", **p)
    shutil.rmtree(data, ignore_errors=True)
    print(f"history: {built['sessions']:,} sessions, {built['events']:,} events")
    print(
        f"forget one session: {one:.1f} s; one caller ({calls} sessions): {caller:.1f} s; "
        f"a rebuild: {rebuild:.1f} s (forget = {100 * one / rebuild:.0f}% and {100 * caller / rebuild:.0f}% of it)"
    )


if __name__ == "__main__":
    os.environ.pop("LAYERCODE_DATA_DIR", None)
    main()
