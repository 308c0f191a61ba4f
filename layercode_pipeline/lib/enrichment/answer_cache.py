"""Answers made outside the warehouse, kept for the enrichment run to reuse.

The express result path (`lib/result_webhooks/express.py`) analyses a call straight from the
landing while the warehouse may be busy with a dbt build. Its answer is kept here under the
same cache key the enrichment computes, so the next enrichment run writes that answer to
`enrichment.session_enrichments` (with the call's tokens and cost) instead of asking the
provider again. SQLite: written from the sensor's process while a run holds the warehouse.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson

DDL = """
create table if not exists answers (
    cache_key  text primary key,
    row        blob not null,     -- the enrichment row's call fields, tokens and cost (JSON)
    created_at real not null
)
"""
# answers older than this are dropped: by then an enrichment run has long taken them over
KEEP_S = 7 * 24 * 3600.0


class AnswerCache:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.execute(DDL)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            con.execute("pragma journal_mode=wal")
            yield con
        finally:
            con.close()

    def put(self, rows: Mapping[str, Mapping[str, Any]], now: float | None = None) -> None:
        """Keep each answer (`{cache_key: row}`); one already kept is left as it is."""
        now = time.time() if now is None else now
        with self._connect() as con:
            con.executemany(
                "insert or ignore into answers values (?, ?, ?)",
                [(key, orjson.dumps(dict(row)), now) for key, row in rows.items()],
            )
            con.execute("delete from answers where created_at < ?", (now - KEEP_S,))

    def get(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        keys = list(keys)
        out: dict[str, dict[str, Any]] = {}
        if not keys:
            return out
        with self._connect() as con:
            for i in range(0, len(keys), 500):  # SQLite's limit on bound parameters
                chunk = keys[i : i + 500]
                found = con.execute(
                    f"select cache_key, row from answers where cache_key in ({', '.join('?' * len(chunk))})", chunk
                ).fetchall()
                out.update((key, orjson.loads(row)) for key, row in found)
        return out
