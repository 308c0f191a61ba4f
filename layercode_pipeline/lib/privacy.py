"""Forgetting a caller everywhere the pipeline keeps a copy, and never taking them back.

`forget` resolves selectors (session ids, conversation ids, phone numbers) to sessions, then,
under the warehouse writers' lock, records tombstones and deletes the sessions from every
warehouse table (raw, enrichment, intermediate and marts); then, outside the lock, rewrites
the landing segments and quarantine files that held their events, deletes their recordings
and reviews, removes their result messages from the outbox (and records `call.erased` for
each, so the customer's copies are deleted too), removes the express path's cached answers,
and publishes the serving copy whole (a new file and new Parquet files: nothing of the old
ones is left). An audit row per erasure says what was removed from each store, with no
personal data in it.

**Tombstones** keep only a keyed hash of each identifier: `sha256("<key>:<kind>:<value>")`,
the key being LAYERCODE_PRIVACY_KEY or, unset, a random key kept in `<data>/privacy/key`
(mode 0600). The ingest drops every event whose session, conversation or phone number has
one (a late webhook, a replayed landing file), the REST backfill drops such records, and the
outbox takes no new message for an erased session.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sqlite3
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson

from layercode_pipeline.contract.landing import SEALED_SUFFIX
from layercode_pipeline.contract.minimise import PHONE_HASH_PREFIX, phone_hash
from layercode_pipeline.landing.durable import fsync_dir, write_whole

KINDS = ("session", "conversation", "phone")
E164 = re.compile(r"^\+[1-9]\d{6,14}$")


def keyed_hash(key: str, kind: str, value: str) -> str:
    """The tombstone of one identifier (lib/ingest.py's `tombstone_filter` computes the same
    in SQL, and lib/backfill.py for REST records)."""
    return hashlib.sha256(f"{key}:{kind}:{value}".encode()).hexdigest()


@dataclass(frozen=True)
class Selector:
    kind: str  # session / conversation / phone
    value: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown selector kind {self.kind!r}")
        if not self.value or not self.value.strip():
            raise ValueError(f"an empty {self.kind} identifier")
        if self.kind == "phone" and not (E164.match(self.value) or self.value.startswith(PHONE_HASH_PREFIX)):
            raise ValueError(f"{self.value!r} is not an E.164 phone number (+ and 7 to 15 digits)")


def read_selectors(path: Path) -> list[Selector]:
    """One selector per line: `session:<id>`, `conversation:<id>` or `phone:<E.164>` (a bare
    `+...` is a phone number, any other bare value a session id); `#` starts a comment."""
    out = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        kind, sep, value = text.partition(":")
        if not sep or kind not in KINDS:
            kind, value = ("phone" if text.startswith("+") else "session"), text
        try:
            out.append(Selector(kind, value.strip()))
        except ValueError as exc:
            raise ValueError(f"{path}:{number}: {exc}") from None
    return out


@dataclass
class ErasureReport:
    erasure_id: str
    erased_at: datetime
    sessions: list[str]
    conversations: list[str]
    removed: dict[str, int] = field(default_factory=dict)

    def add(self, store: str, n: int) -> None:
        if n:
            self.removed[store] = self.removed.get(store, 0) + n


def _sessions_for(con: duckdb.DuckDBPyConnection, selectors: list[Selector]) -> tuple[set[str], set[str]]:
    """Every session (and conversation) a selector names, from the webhooks and REST records."""
    sessions = {s.value for s in selectors if s.kind == "session"}
    conversations = {s.value for s in selectors if s.kind == "conversation"}
    phones = [s.value for s in selectors if s.kind == "phone"]
    if conversations:
        sessions |= {
            r[0]
            for r in con.execute(
                "select distinct session_id from raw.layercode_events "
                "where conversation_id in (select unnest(?::varchar[])) and session_id is not null",
                [sorted(conversations)],
            ).fetchall()
        }
    if phones:
        sessions |= {
            r[0]
            for r in con.execute(
                """
                select distinct session_id from raw.layercode_events
                where session_id is not null and (json_extract_string(body, '$.from_phone_number') in (select unnest($p))
                   or json_extract_string(body, '$.to_phone_number') in (select unnest($p)))
                union
                select distinct session_id from raw.layercode_session_details
                where record->>'$.from_phone_number' in (select unnest($p)) or record->>'$.to_phone_number' in (select unnest($p))
                """,
                {"p": phones},
            ).fetchall()
        }
    if sessions:  # and the conversations those sessions belong to
        conversations |= {
            r[0]
            for r in con.execute(
                "select distinct conversation_id from raw.layercode_events "
                "where session_id in (select unnest(?::varchar[])) and conversation_id is not null",
                [sorted(sessions)],
            ).fetchall()
        }
    return sessions, conversations


def _tables_with(con: duckdb.DuckDBPyConnection, column: str) -> list[str]:
    return [
        f"{schema}.{table}"
        for schema, table in con.execute(
            """select table_schema, table_name from information_schema.columns
               join information_schema.tables using (table_catalog, table_schema, table_name)
               where column_name = ? and table_type = 'BASE TABLE' and table_catalog = current_database()
               order by 1, 2""",
            [column],
        ).fetchall()
    ]


def erase_from_warehouse(
    con: duckdb.DuckDBPyConnection,
    key: str,
    selectors: list[Selector],
    *,
    requested_by: str,
) -> tuple[ErasureReport, dict[str, Any]]:
    """Tombstones, then every warehouse row of the sessions, in one transaction. Returns the
    report and what the file stores need (landing files, recording uris)."""
    # a number stored hashed (LAYERCODE_HASH_PHONE_NUMBERS) is found, and kept out, by its hash too
    selectors = [
        *selectors,
        *(Selector("phone", phone_hash(key, s.value)) for s in selectors if s.kind == "phone"),
    ]
    sessions, conversations = _sessions_for(con, selectors)
    report = ErasureReport(uuid.uuid4().hex, datetime.now(UTC), sorted(sessions), sorted(conversations))
    ids = sorted(sessions)
    files = [
        r[0]
        for r in con.execute(
            "select distinct source_file from raw.layercode_events where session_id in (select unnest(?::varchar[]))",
            [ids],
        ).fetchall()
    ]
    agents = dict(
        con.execute(
            "select session_id, min(agent_id) from raw.layercode_events "
            "where session_id in (select unnest(?::varchar[])) group by 1",
            [ids],
        ).fetchall()
    )
    recordings = [
        r[0]
        for r in con.execute(
            "select path from raw.layercode_recordings where session_id in (select unnest(?::varchar[])) "
            "and path is not null",
            [ids],
        ).fetchall()
    ]
    tombstones = {keyed_hash(key, "session", s): "session" for s in sessions}
    tombstones |= {keyed_hash(key, "conversation", c): "conversation" for c in conversations}
    tombstones |= {keyed_hash(key, s.kind, s.value): s.kind for s in selectors if s.kind == "phone"}
    con.execute("begin transaction")
    try:
        con.executemany(
            "insert or ignore into raw.erasure_tombstones values (?, ?, ?, ?)",
            [(h, kind, report.erasure_id, report.erased_at) for h, kind in tombstones.items()],
        )
        for table in _tables_with(con, "session_id"):
            n = con.execute(f"delete from {table} where session_id in (select unnest(?::varchar[]))", [ids]).fetchone()
            report.add(table, int(n[0]) if n else 0)
        for table in set(_tables_with(con, "conversation_id")) - set(_tables_with(con, "session_id")):
            n = con.execute(
                f"delete from {table} where conversation_id in (select unnest(?::varchar[]))", [sorted(conversations)]
            ).fetchone()
            report.add(table, int(n[0]) if n else 0)
        if ids:  # a rejected line may quote the session
            n = con.execute(
                "delete from raw.layercode_rejects where raw_line is not null "
                "and list_has_any(regexp_extract_all(raw_line, '[A-Za-z0-9_.:-]+'), ?::varchar[])",
                [ids],
            ).fetchone()
            report.add("raw.layercode_rejects", int(n[0]) if n else 0)
        con.execute(
            "insert into raw.erasure_audit values (?, ?, ?, ?, ?, ?, ?)",
            [
                report.erasure_id,
                report.erased_at,
                requested_by,
                ",".join(sorted({s.kind for s in selectors})),
                sorted(keyed_hash(key, s.kind, s.value) for s in selectors),
                len(ids),
                json.dumps(report.removed),
            ],
        )
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        raise
    con.execute("checkpoint")  # the deleted rows leave the database file now, not at some later checkpoint
    return report, {"files": files, "recordings": recordings, "agents": agents}


def _without(data: bytes, session_ids: set[str]) -> tuple[bytes, int]:
    kept, removed = [], 0
    for line in data.splitlines(keepends=True):
        if _line_session(line) in session_ids:
            removed += 1
        else:
            kept.append(line)
    return b"".join(kept), removed


def erase_landing_objects(landing, urls: Iterable[str], session_ids: set[str]) -> int:
    """Landed objects (s3://) that held the sessions' events, written again under the same
    name without them (an object PUT replaces it whole: no reader sees a torn object, and the
    ingest, which knows it by name, does not take the rest in again)."""
    import obstore

    store, root, removed = landing.store(), landing.url.rstrip("/") + "/", 0
    for url in sorted({u for u in urls if u.startswith(root)}):
        key = url.removeprefix(root)
        kept, n = _without(bytes(obstore.get(store, key).bytes()), session_ids)
        if n:
            obstore.put(store, key, kept)
            removed += n
    return removed


def rewrite_without(path: Path, session_ids: set[str]) -> int:
    """Rewrite a landing segment (or review file) without the lines of `session_ids`,
    atomically (a new file fsynced, then renamed over the old: a reader sees the old or the
    new, never a torn one). Returns how many lines were removed."""
    kept, removed = _without(path.read_bytes(), session_ids)
    if not removed:
        return 0
    tmp = path.with_name(f".{path.name}.{os.getpid()}.erase")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_whole(fd, kept)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return removed


def _line_session(line: bytes) -> str | None:
    """The session a landing envelope or review line is about (None when it cannot be read)."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict):
        return None
    if isinstance(record.get("session_id"), str):
        return record["session_id"]
    body = record.get("body")
    if isinstance(body, str):
        with contextlib.suppress(orjson.JSONDecodeError):
            inner = orjson.loads(body)
            if isinstance(inner, dict) and isinstance(inner.get("session_id"), str):
                return inner["session_id"]
    return None


def erase_landing_files(files: Iterable[str], session_ids: set[str]) -> int:
    """`files`: the sealed segments that held the sessions' events, and those not ingested yet
    (a late event of an erased session may wait there), each rewritten without them."""
    removed = 0
    for path in sorted({Path(f) for f in files if not str(f).startswith("s3://")}):
        if path.is_file() and path.name.endswith(SEALED_SUFFIX):
            removed += rewrite_without(path, session_ids)
    return removed


def erase_quarantine(quarantine: Path, session_ids: set[str]) -> int:
    """Quarantined bodies (with their meta files) that mention a session."""
    removed = 0
    if not quarantine.is_dir():
        return 0
    needles = [s.encode() for s in session_ids]
    for body in quarantine.rglob("*.body"):
        data = body.read_bytes()
        if any(n in data for n in needles):
            body.unlink()
            body.with_name(body.name.removesuffix(".body") + ".meta.json").unlink(missing_ok=True)
            removed += 1
    return removed


def erase_from_sqlite(path: Path, statements: list[tuple[str, list[Any]]]) -> int:
    """Run deletes on a SQLite file, then VACUUM it so the deleted pages are gone from the file."""
    if not path.exists():
        return 0
    con = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        removed = sum(con.execute(sql, params).rowcount for sql, params in statements)
        con.execute("pragma wal_checkpoint(truncate)")
        con.execute("vacuum")
        return removed
    finally:
        con.close()


ERASED = "<erased>"


def scrub_dagster_home(home: Path, session_ids: set[str]) -> int:
    """Replace the session ids in what a Dagster instance with SQLite storage keeps under
    `home` (run, event log and schedule databases; compute logs) with `<erased>`, then VACUUM:
    check examples and log lines name sessions. Returns how many places changed."""
    if not home.is_dir() or not session_ids:
        return 0
    changed = 0
    for db in sorted(home.rglob("*.db")):
        try:
            con = sqlite3.connect(db, timeout=30, isolation_level=None)
        except sqlite3.Error:
            continue
        try:
            tables = [r[0] for r in con.execute("select name from sqlite_master where type = 'table'")]
            for table in tables:
                declared = {r[1]: (r[2] or "").upper() for r in con.execute(f'pragma table_info("{table}")')}
                columns = [c for c, t in declared.items() if not t or "TEXT" in t or "CHAR" in t or "CLOB" in t]
                for column in columns:
                    for sid in session_ids:
                        changed += con.execute(
                            f'update "{table}" set "{column}" = replace("{column}", ?, ?) '
                            f'where typeof("{column}") = \'text\' and instr("{column}", ?) > 0',
                            (sid, ERASED, sid),
                        ).rowcount
            if changed:
                con.execute("vacuum")
        except sqlite3.Error:
            continue  # not a database Dagster wrote, or locked past the timeout: left as it is
        finally:
            con.close()
    needles = [s.encode() for s in session_ids]
    for log in sorted(p for p in (home / "storage").rglob("*") if p.is_file()) if (home / "storage").is_dir() else []:
        data = log.read_bytes()
        if any(n in data for n in needles):
            for n in needles:
                data = data.replace(n, ERASED.encode())
            log.write_bytes(data)
            changed += 1
    return changed


def forget(
    *,
    warehouse,  # lib.warehouse.Warehouse
    paths,  # config.DataPaths
    key: str,
    selectors: list[Selector],
    recordings,  # lib.recording_store.RecordingStore
    outbox_path: Path | None = None,
    endpoints: list | None = None,  # config.ResultEndpoint: who gets call.erased
    object_landing=None,  # landing.objects.ObjectLanding, when events land in S3
    dagster_home: Path | None = None,  # a Dagster instance with SQLite storage: its copies scrubbed
    requested_by: str = "cli",
) -> ErasureReport:
    """Forget the sessions `selectors` name in every store; see the module's docstring."""
    from layercode_pipeline.lib.ingest import pending_segments
    from layercode_pipeline.lib.result_webhooks.messages import erased_message
    from layercode_pipeline.lib.result_webhooks.outbox import Outbox
    from layercode_pipeline.lib.serving_copy import STATE_FILE, publish_serving_copy

    with warehouse.open_for_writing() as con:
        report, found = erase_from_warehouse(con, key, selectors, requested_by=requested_by)
        pending = [str(p) for p in pending_segments(con, paths.landing)] if paths.landing.is_dir() else []
    ids = set(report.sessions)
    if ids:
        report.add("landing events", erase_landing_files([*found["files"], *pending], ids))
        if object_landing is not None:
            report.add("landing events", erase_landing_objects(object_landing, found["files"], ids))
        report.add("quarantine files", erase_quarantine(paths.quarantine, ids))
        report.add("recordings", sum(recordings.delete(uri) for uri in found["recordings"]))
        for review_file in sorted(paths.reviews.glob("reviews-*.jsonl")) if paths.reviews.is_dir() else []:
            report.add("reviews", rewrite_without(review_file, ids))
        report.add(
            "express answers",
            erase_from_sqlite(
                paths.data_dir / "enrichment" / "express_answers.sqlite3",
                [("delete from answers where " + " or ".join(["instr(row, ?) > 0"] * len(ids)), sorted(ids))],
            ),
        )
        if outbox_path is not None and outbox_path.exists():
            report.add(
                "result messages",
                erase_from_sqlite(
                    outbox_path,
                    [
                        (
                            "delete from deliveries where message_id in (select id from messages where session_id in "
                            f"({','.join('?' * len(ids))}) and type <> 'call.erased')",
                            sorted(ids),
                        ),
                        (
                            f"delete from messages where session_id in ({','.join('?' * len(ids))}) "
                            "and type <> 'call.erased'",
                            sorted(ids),
                        ),
                    ],
                ),
            )
            # the customer's product deletes its copy too; and the outbox takes no new message
            # for these sessions (Outbox.enqueue refuses a session with a call.erased)
            Outbox(outbox_path).enqueue(
                [erased_message(sid, found["agents"].get(sid), report.erased_at) for sid in sorted(ids)],
                endpoints or [],
            )
        if dagster_home is not None:
            report.add("dagster records", scrub_dagster_home(dagster_home, ids))
        serving = paths.serving
        if (serving / "analytics.duckdb").exists():  # a whole new copy and new Parquet files
            (serving / STATE_FILE).unlink(missing_ok=True)
            publish_serving_copy(warehouse, serving)
            report.add("serving copy republished", 1)
    with warehouse.open_for_writing() as con:  # what the file stores removed, for the audit
        con.execute(
            "update raw.erasure_audit set removed = ? where erasure_id = ?",
            [json.dumps(report.removed), report.erasure_id],
        )
    return report
