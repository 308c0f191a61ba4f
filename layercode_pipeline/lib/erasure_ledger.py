"""The erasure ledger: erased callers' tombstones, and erasures not finished yet, outside the
warehouse.

The warehouse keeps tombstones too (`raw.erasure_tombstones`, for the ingest's and the
backfill's SQL), but a reader that must never wait for the warehouse (the express result
path, which analyses calls straight from the landing while a run holds the writers' lock)
cannot see them there. So every tombstone is first written here, a SQLite file under
`<data>/privacy/` that any process reads at once, before any store is touched.

An erasure is recorded here (`begin`) with its plan (the sessions, the files and recordings
that held them) before it acts, and marked done only when every store is clean: a `forget`
stopped half-way (a full disk during the landing rewrite, a kill) is finished by the next
`forget`. The plan names session ids (opaque ids, never a phone number or what was said) and is
deleted when the erasure is done; a tombstone is a keyed hash, never the identifier.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LEDGER_FILE = Path("privacy") / "ledger.sqlite3"

SCHEMA = """
create table if not exists tombstones (
    key_hash    text primary key,   -- keyed_hash(key, kind, value)
    kind        text not null,      -- session / conversation / phone
    erasure_id  text not null,
    created_at  real not null
);
create table if not exists erasures (
    erasure_id    text primary key,
    requested_at  real not null,
    requested_by  text not null,
    plan          text,              -- what is left to erase (JSON); null once done
    done_at       real
);
"""


def keyed_hash(key: str, kind: str, value: str) -> str:
    """The tombstone of one identifier (lib/ingest.py's `tombstone_filter` computes the same
    in SQL, and lib/backfill.py for REST records)."""
    return hashlib.sha256(f"{key}:{kind}:{value}".encode()).hexdigest()


@dataclass(frozen=True)
class Unfinished:
    erasure_id: str
    requested_by: str
    requested_at: float
    plan: dict[str, Any]


class ErasureLedger:
    def __init__(self, path: Path | str):
        self.path = Path(path)

    @classmethod
    def under(cls, data_dir: Path) -> ErasureLedger:
        return cls(Path(data_dir) / LEDGER_FILE)

    @contextmanager
    def _connect(self, *, write: bool) -> Iterator[sqlite3.Connection | None]:
        if not write and not self.path.exists():
            yield None  # nothing was ever erased here
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            con.execute("pragma journal_mode = wal")
            con.execute("pragma synchronous = full")  # a recorded erasure survives a crash
            if write:
                con.executescript(SCHEMA)
                con.execute("begin immediate")
                try:
                    yield con
                except BaseException:
                    con.execute("rollback")
                    raise
                con.execute("commit")
            else:
                yield con
        finally:
            con.close()

    # --- tombstones ------------------------------------------------------------------------
    def hashes(self) -> frozenset[str]:
        with self._connect(write=False) as con:
            if con is None:
                return frozenset()
            try:
                return frozenset(r[0] for r in con.execute("select key_hash from tombstones"))
            except sqlite3.OperationalError:  # made by another process, schema not written yet
                return frozenset()

    def erased(self, key: str) -> ErasedFilter:
        """A predicate over webhook bodies: true for an erased session, conversation or number."""
        return ErasedFilter(key, self.hashes())

    # --- erasures --------------------------------------------------------------------------
    def begin(
        self,
        erasure_id: str,
        requested_by: str,
        tombstones: dict[str, str],
        plan: dict[str, Any],
    ) -> None:
        """Record the erasure, its tombstones and its plan, before any store is touched."""
        now = time.time()
        with self._connect(write=True) as con:
            assert con is not None
            con.executemany(
                "insert or ignore into tombstones values (?, ?, ?, ?)",
                [(h, kind, erasure_id, now) for h, kind in tombstones.items()],
            )
            con.execute(
                "insert into erasures values (?, ?, ?, ?, null)",
                (erasure_id, now, requested_by, json.dumps(plan)),
            )

    def finish(self, erasure_id: str) -> None:
        """Every store is clean: the plan (which names sessions) goes."""
        with self._connect(write=True) as con:
            assert con is not None
            con.execute("update erasures set plan = null, done_at = ? where erasure_id = ?", (time.time(), erasure_id))
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            con.execute("pragma wal_checkpoint(truncate)")
            con.execute("vacuum")  # the plan's pages leave the file
        finally:
            con.close()

    def unfinished(self) -> list[Unfinished]:
        with self._connect(write=False) as con:
            if con is None:
                return []
            try:
                rows = con.execute(
                    "select erasure_id, requested_by, requested_at, plan from erasures "
                    "where done_at is null order by requested_at"
                ).fetchall()
            except sqlite3.OperationalError:
                return []
        return [Unfinished(r[0], r[1], r[2], json.loads(r[3])) for r in rows]


class ErasedFilter:
    """Whether a webhook body (or a REST record) belongs to an erased session, conversation or
    phone number: the ingest's `tombstone_filter`, in Python, for readers outside the warehouse."""

    def __init__(self, key: str, hashes: Iterable[str]):
        self.key = key
        self.hashes = frozenset(hashes)

    def __bool__(self) -> bool:
        return bool(self.hashes)

    def __call__(self, body: dict[str, Any]) -> bool:
        if not self.hashes:
            return False
        for kind, field in (
            ("session", "session_id"),
            ("conversation", "conversation_id"),
            ("phone", "from_phone_number"),
            ("phone", "to_phone_number"),
        ):
            value = body.get(field)
            if isinstance(value, str) and value and keyed_hash(self.key, kind, value) in self.hashes:
                return True
        return False
