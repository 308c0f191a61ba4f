"""The outbox: every result message, and its delivery to each endpoint, in one SQLite file.

A message is committed here before its first attempt, so a crash at any point loses nothing:
a delivery is claimed with a lease, and one whose process died (SIGKILL mid-batch) is claimed
again when the lease runs out, under the same `webhook-id`. SQLite, not the warehouse:
DuckDB allows one writing process per file, and a delivery must never wait for (or hold) the
warehouse writers' lock; WAL mode lets the CLI, the sensor and a run read and write at once.

Statuses: `pending` (due at `next_attempt_at`), `delivered`, `dead` (the last attempt failed,
or the endpoint answered 410 Gone and was disabled). `replay` makes deliveries pending again.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layercode_pipeline.config import ResultEndpoint
from layercode_pipeline.lib.result_webhooks.messages import Message

SCHEMA = """
create table if not exists messages (
    id          text primary key,      -- the webhook-id of every attempt
    type        text not null,
    session_id  text not null,
    agent_id    text,
    body        blob not null,         -- the exact bytes signed and sent
    created_at  real not null
);
create table if not exists deliveries (
    message_id       text not null references messages(id),
    endpoint_url     text not null,
    status           text not null check (status in ('pending', 'delivered', 'dead')),
    attempts         integer not null default 0,
    next_attempt_at  real not null,
    leased_until     real,             -- a worker holds it until then (a dead worker's lease runs out)
    first_attempt_at real,
    last_attempt_at  real,
    last_status      integer,          -- HTTP status of the last attempt, null for a network error
    last_error       text,
    delivered_at     real,
    primary key (message_id, endpoint_url)
);
create index if not exists deliveries_due on deliveries (status, next_attempt_at);
create index if not exists messages_session on messages (session_id, type);
create table if not exists endpoints (
    url          text primary key,
    disabled_at  real,
    reason       text
);
create table if not exists marks (name text primary key, value text not null);
"""

STATUSES = ("pending", "delivered", "dead")
LEASE_MARGIN_S = 5.0


@dataclass(frozen=True)
class Delivery:
    message_id: str
    endpoint_url: str
    type: str
    session_id: str
    body: bytes
    attempts: int
    first_attempt_at: float | None


class Outbox:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.executescript(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            con.execute("pragma journal_mode = wal")
            con.execute("pragma synchronous = full")  # committed means on disk: the message survives a crash
            yield con
        finally:
            con.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as con:
            con.execute("begin immediate")
            try:
                yield con
            except BaseException:
                con.execute("rollback")
                raise
            con.execute("commit")

    # --- writing -------------------------------------------------------------------------
    def enqueue(self, messages: Iterable[Message], endpoints: list[ResultEndpoint], now: float | None = None) -> int:
        """Record each message and a pending delivery for every endpoint that wants it. Returns
        how many deliveries are new (a message enqueued again adds none)."""
        now = time.time() if now is None else now
        added = 0
        with self._tx() as con:
            for m in messages:
                erased = con.execute(  # an erased session gets no new message but its call.erased
                    "select 1 from messages where session_id = ? and type = 'call.erased'", (m.session_id,)
                ).fetchone()
                if erased and m.type != "call.erased":
                    continue
                con.execute(
                    "insert or ignore into messages values (?, ?, ?, ?, ?, ?)",
                    (m.id, m.type, m.session_id, m.agent_id, m.body, now),
                )
                for ep in endpoints:
                    if ep.wants(m.type, m.agent_id):
                        added += con.execute(
                            "insert or ignore into deliveries (message_id, endpoint_url, status, next_attempt_at) "
                            "values (?, ?, 'pending', ?)",
                            (m.id, ep.url, now),
                        ).rowcount
        return added

    def claim_due(self, endpoint_url: str, now: float, limit: int, lease_s: float) -> list[Delivery]:
        """Lease this endpoint's due deliveries (oldest first) to the caller for `lease_s`
        (long enough to attempt them all: a live worker's lease never runs out first; a dead
        worker's deliveries are claimed again when it does)."""
        with self._tx() as con:
            rows = con.execute(
                """
                select d.message_id, d.endpoint_url, m.type, m.session_id, m.body, d.attempts, d.first_attempt_at
                from deliveries d join messages m on m.id = d.message_id
                where d.endpoint_url = ? and d.status = 'pending' and d.next_attempt_at <= ?
                  and (d.leased_until is null or d.leased_until < ?)
                order by d.next_attempt_at, m.created_at limit ?""",
                (endpoint_url, now, now, limit),
            ).fetchall()
            con.executemany(
                "update deliveries set leased_until = ? where message_id = ? and endpoint_url = ?",
                [(now + lease_s, r[0], r[1]) for r in rows],
            )
        return [Delivery(*r) for r in rows]

    def record_attempt(
        self,
        d: Delivery,
        *,
        at: float,
        status: int | None,
        error: str | None,
        outcome: str,
        next_attempt_at: float | None = None,
    ) -> None:
        """One attempt's result: `delivered`, `retry` (due again at `next_attempt_at`) or `dead`."""
        new_status = {"delivered": "delivered", "retry": "pending", "dead": "dead"}[outcome]
        with self._tx() as con:
            con.execute(
                """
                update deliveries set status = ?, attempts = attempts + 1, leased_until = null,
                    first_attempt_at = coalesce(first_attempt_at, ?), last_attempt_at = ?, last_status = ?,
                    last_error = ?, next_attempt_at = coalesce(?, next_attempt_at),
                    delivered_at = case when ? = 'delivered' then ? end
                where message_id = ? and endpoint_url = ?""",
                (new_status, at, at, status, error, next_attempt_at, new_status, at, d.message_id, d.endpoint_url),
            )

    def release(self, deliveries: Iterable[Delivery]) -> None:
        """Give leases back without counting an attempt (the endpoint is unresponsive this round)."""
        with self._tx() as con:
            con.executemany(
                "update deliveries set leased_until = null where message_id = ? and endpoint_url = ?",
                [(d.message_id, d.endpoint_url) for d in deliveries],
            )

    def disable_endpoint(self, url: str, reason: str, now: float) -> int:
        """410 Gone: the endpoint gets nothing more; its pending deliveries are dead-lettered
        (a `replay` re-enables it)."""
        with self._tx() as con:
            con.execute(
                "insert into endpoints values (?, ?, ?) on conflict (url) do update set "
                "disabled_at = excluded.disabled_at, reason = excluded.reason",
                (url, now, reason),
            )
            return con.execute(
                "update deliveries set status = 'dead', leased_until = null, last_error = ? "
                "where endpoint_url = ? and status = 'pending'",
                (reason, url),
            ).rowcount

    def disabled_endpoints(self) -> dict[str, str]:
        with self._connect() as con:
            return dict(con.execute("select url, reason from endpoints where disabled_at is not null").fetchall())

    def replay(
        self,
        *,
        message_ids: list[str] | None = None,
        status: str | None = None,
        since: float | None = None,
        endpoint_url: str | None = None,
        now: float | None = None,
    ) -> int:
        """Make the selected deliveries pending and due now, with a fresh retry schedule (the
        same `webhook-id`: a receiver that kept it may drop the copy). Re-enables their
        endpoints."""
        now = time.time() if now is None else now
        where, args = self._filter(message_ids=message_ids, status=status, since=since, endpoint_url=endpoint_url)
        with self._tx() as con:
            urls = [r[0] for r in con.execute(f"select distinct endpoint_url from deliveries d {where}", args)]
            con.executemany(
                "update endpoints set disabled_at = null, reason = null where url = ?", [(u,) for u in urls]
            )
            return con.execute(
                f"""
                update deliveries set status = 'pending', next_attempt_at = ?, leased_until = null,
                    first_attempt_at = null, attempts = 0, delivered_at = null
                where rowid in (select d.rowid from deliveries d {where})""",
                [now, *args],
            ).rowcount

    # --- reading -------------------------------------------------------------------------
    @staticmethod
    def _filter(*, message_ids=None, status=None, since=None, endpoint_url=None) -> tuple[str, list[Any]]:
        clauses, args = [], []
        if message_ids:
            clauses.append(f"d.message_id in ({', '.join('?' * len(message_ids))})")
            args += list(message_ids)
        if status:
            if status not in STATUSES:
                raise ValueError(f"status must be one of {STATUSES}")
            clauses.append("d.status = ?")
            args.append(status)
        if since is not None:
            clauses.append("(select created_at from messages m where m.id = d.message_id) >= ?")
            args.append(since)
        if endpoint_url:
            clauses.append("d.endpoint_url = ?")
            args.append(endpoint_url)
        return ("where " + " and ".join(clauses)) if clauses else "", args

    def deliveries(self, **filters: Any) -> list[dict[str, Any]]:
        """One row per message and endpoint (newest first), for the CLI and the warehouse mirror."""
        where, args = self._filter(**filters)
        with self._connect() as con:
            cur = con.execute(
                f"""
                select d.message_id, m.type, m.session_id, m.agent_id, d.endpoint_url, d.status, d.attempts,
                       m.created_at, d.first_attempt_at, d.last_attempt_at, d.delivered_at, d.next_attempt_at,
                       d.last_status, d.last_error
                from deliveries d join messages m on m.id = d.message_id {where}
                order by m.created_at desc, d.endpoint_url""",
                args,
            )
            names = [c[0] for c in cur.description]
            return [dict(zip(names, r)) for r in cur.fetchall()]

    def counts(self) -> dict[str, dict[str, int]]:
        """endpoint -> status -> deliveries."""
        out: dict[str, dict[str, int]] = {}
        with self._connect() as con:
            for url, status, n in con.execute("select endpoint_url, status, count(*) from deliveries group by 1, 2"):
                out.setdefault(url, dict.fromkeys(STATUSES, 0))[status] = n
        return out

    def next_due(self, endpoint_urls: list[str]) -> float | None:
        if not endpoint_urls:
            return None
        with self._connect() as con:
            return con.execute(
                f"select min(next_attempt_at) from deliveries where status = 'pending' and "
                f"endpoint_url in ({', '.join('?' * len(endpoint_urls))})",
                endpoint_urls,
            ).fetchone()[0]

    def mark(self, name: str) -> str | None:
        with self._connect() as con:
            row = con.execute("select value from marks where name = ?", (name,)).fetchone()
        return row[0] if row else None

    def set_mark(self, name: str, value: str) -> None:
        with self._tx() as con:
            con.execute(
                "insert into marks values (?, ?) on conflict (name) do update set value = excluded.value", (name, value)
            )
