"""A 50,000-turn session.end (about 2.5 MB, under the listener's 10 MiB limit) through `dbt build`.

    .venv/bin/python bench/long_transcript_bench.py [--turns 50000 5000]

Prints, for each size, the full `dbt build` time with that session beside 100 ordinary calls,
and the same build without it (the baseline measured in the same run). Unnesting must be
linear in the turns: before issue 12 the lateral unnest ran out of disk at 50,000 turns.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dbt_bench import dbt_build, land  # noqa: E402

from layercode_pipeline.contract.landing import build_envelope  # noqa: E402
from layercode_pipeline.lib.ingest import ingest_landing  # noqa: E402
from layercode_pipeline.lib.warehouse import Warehouse  # noqa: E402


def long_session_end(turns: int) -> bytes:
    start = 1_795_000_000_000
    return orjson.dumps(
        {
            "type": "session.end",
            "session_id": f"long{turns}",
            "conversation_id": f"longc{turns}",
            "agent_id": "ag_long",
            "started_at": "2026-11-20T09:00:00.000Z",
            "ended_at": "2026-11-20T12:00:00.000Z",
            "duration": 10_800_000,
            "transcript": [
                {
                    "role": "user" if i % 2 else "assistant",
                    "text": f"turn number {i} says a few words",
                    "timestamp": start + i * 200,
                }
                for i in range(turns)
            ],
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--turns", type=int, nargs="+", default=[50_000, 5_000])
    args = ap.parse_args()
    for turns in args.turns:
        data = Path(tempfile.mkdtemp(prefix=f"long-transcript-{turns}-"))
        land(data / "landing", 100, seed=turns, name="base")
        with Warehouse.at(None, data_dir=data).open_for_writing() as con:
            ingest_landing(con, data / "landing")
        baseline = dbt_build(data / "warehouse.duckdb", data / "target")
        body = long_session_end(turns)
        part = data / "landing" / "dt=2026-11-20" / "hour=10"
        part.mkdir(parents=True)
        (part / "long.jsonl").write_bytes(
            build_envelope(
                received_at=datetime(2026, 11, 20, 10, tzinfo=UTC),
                agent_id="ag_long",
                event_type="session.end",
                content_sha256=hashlib.sha256(body).hexdigest(),
                body=body,
                headers={},
                writer_id="bench",
            )
        )
        with Warehouse.at(None, data_dir=data).open_for_writing() as con:
            ingest_landing(con, data / "landing")
        t = time.perf_counter()
        with_long = dbt_build(data / "warehouse.duckdb", data / "target")
        con = duckdb.connect(str(data / "warehouse.duckdb"), read_only=True)
        kept = con.execute("select count(*) from marts.fct_turns where session_id = ?", [f"long{turns}"]).fetchone()[0]
        con.close()
        print(
            f"{turns:>6,} turns ({len(body) / 1e6:.1f} MB body): incremental dbt build with it {with_long:5.1f} s "
            f"(full build of 100 calls before it: {baseline:5.1f} s); {kept:,} turns in marts.fct_turns "
            f"[{time.perf_counter() - t:.1f} s incl. count]"
        )


if __name__ == "__main__":
    main()
