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

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from layercode_pipeline.config import ResultEndpoint
from layercode_pipeline.lib.result_webhooks.messages import CALL_ANALYZED, CALL_ERASED, Message

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
-- every endpoint a message was ever queued for, with what it takes (never its secret): an
-- erasure started where LAYERCODE_RESULT_WEBHOOKS is not set still tells each of them
create table if not exists known_endpoints (
    url         text primary key,
    events      text not null,         -- JSON list
    agents      text,                  -- JSON list, null: every agent
    first_seen  real not null
);
-- sessions erased (sha256 of the id): no message but call.erased is taken for them, after
-- their call.erased itself has been delivered and removed
create table if not exists erased_sessions (session_hash text primary key);
"""

STATUSES = ("pending", "delivered", "dead")


def _session_hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


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
        """Record each new message and a pending delivery for every endpoint that wants it.
        Returns how many deliveries are new. A message enqueued again (the express path and the
        warehouse path build the same one; a landing file rewritten by `forget` is read again)
        adds none: an endpoint added later gets what is analysed from then on, never the past.
        A `call.analyzed` that follows an earlier, different one for its session says which it
        replaces (`data.replaces`)."""
        now = time.time() if now is None else now
        added = 0
        with self._tx() as con:
            self._remember_endpoints(con, endpoints, now)
            for m in messages:
                if m.type != CALL_ERASED and self._is_erased(con, m.session_id):
                    continue  # an erased session gets no new message but its call.erased
                body = m.body
                if (
                    m.type == CALL_ANALYZED
                    and not con.execute("select 1 from messages where id = ?", (m.id,)).fetchone()
                ):
                    earlier = con.execute(
                        "select id from messages where session_id = ? and type = ? order by created_at desc limit 1",
                        (m.session_id, CALL_ANALYZED),
                    ).fetchone()
                    if earlier:
                        parsed = orjson.loads(body)
                        parsed["data"]["replaces"] = earlier[0]
                        body = orjson.dumps(parsed)
                new = con.execute(
                    "insert or ignore into messages values (?, ?, ?, ?, ?, ?)",
                    (m.id, m.type, m.session_id, m.agent_id, body, now),
                ).rowcount
                if not new:
                    continue
                if m.type == CALL_ERASED:
                    con.execute("insert or ignore into erased_sessions values (?)", (_session_hash(m.session_id),))
                for ep in endpoints:
                    if ep.wants(m.type, m.agent_id):
                        added += con.execute(
                            "insert or ignore into deliveries (message_id, endpoint_url, status, next_attempt_at) "
                            "values (?, ?, 'pending', ?)",
                            (m.id, ep.url, now),
                        ).rowcount
        return added

    @staticmethod
    def _is_erased(con: sqlite3.Connection, session_id: str) -> bool:
        return bool(
            con.execute("select 1 from erased_sessions where session_hash = ?", (_session_hash(session_id),)).fetchone()
            or con.execute(
                "select 1 from messages where session_id = ? and type = ?", (session_id, CALL_ERASED)
            ).fetchone()
        )

    @staticmethod
    def _remember_endpoints(con: sqlite3.Connection, endpoints: list[ResultEndpoint], now: float) -> None:
        con.executemany(
            "insert into known_endpoints values (?, ?, ?, ?) on conflict (url) do update set "
            "events = excluded.events, agents = excluded.agents",
            [
                (
                    e.url,
                    json.dumps(sorted(e.events)),
                    json.dumps(sorted(e.agents)) if e.agents is not None else None,
                    now,
                )
                for e in endpoints
            ],
        )

    def has_message(self, message_id: str) -> bool:
        with self._connect() as con:
            return con.execute("select 1 from messages where id = ?", (message_id,)).fetchone() is not None

    def known_endpoints(self) -> list[ResultEndpoint]:
        """Every endpoint messages were ever queued for, with what it takes (no secrets: the
        process that delivers signs with its own configuration)."""
        with self._connect() as con:
            rows = con.execute("select url, events, agents from known_endpoints order by url").fetchall()
        return [
            ResultEndpoint(url, (), frozenset(json.loads(events)), frozenset(json.loads(agents)) if agents else None)
            for url, events, agents in rows
        ]

    def refuse_sessions(self, session_ids: Iterable[str]) -> None:
        """Take no message but `call.erased` for these (erased) sessions from now on."""
        with self._tx() as con:
            con.executemany(
                "insert or ignore into erased_sessions values (?)", [(_session_hash(s),) for s in session_ids]
            )

    def forget_delivered_erasures(self) -> int:
        """A `call.erased` delivered to every endpoint it was queued for has done its work: it
        goes with its deliveries (it names the session); the session stays refused by its hash."""
        with self._tx() as con:
            ids = [
                r[0]
                for r in con.execute(
                    """select m.id from messages m where m.type = ? and not exists (
                           select 1 from deliveries d where d.message_id = m.id and d.status <> 'delivered')""",
                    (CALL_ERASED,),
                ).fetchall()
            ]
            for chunk in (ids[i : i + 500] for i in range(0, len(ids), 500)):
                marks = ",".join("?" * len(chunk))
                con.execute(f"delete from deliveries where message_id in ({marks})", chunk)
                con.execute(f"delete from messages where id in ({marks})", chunk)
        if ids:
            with self._connect() as con:
                con.execute("pragma wal_checkpoint(truncate)")
                con.execute("vacuum")
        return len(ids)

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
