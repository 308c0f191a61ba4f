"""Forgetting a caller everywhere the pipeline keeps a copy, and never taking them back.

`forget` resolves selectors (session ids, conversation ids, phone numbers) to sessions, each
selector on its own: one that is malformed is refused, one that matches nothing is reported
and, unless `allow_unmatched`, stops the erasure before anything is done (a typo is not an
erasure). Then it records the erasure in the **erasure ledger** (its tombstones and its plan:
the sessions, the landing files and recordings that held them; `lib/erasure_ledger.py`)
before any store is touched, so an erasure stopped half-way (a full disk, a kill) is finished
by the next `forget`. Under the warehouse writers' lock it records the tombstones in the
warehouse too and deletes the sessions from every table, then writes the warehouse file anew
(a deleted row's bytes stay in a DuckDB file's free blocks until something overwrites them).
Outside the lock it rewrites the landing segments and quarantine files that held their events,
deletes their recordings and reviews, removes their result messages from the outbox (and
records `call.erased` for each endpoint that ever took messages), removes the express path's
cached answers and the ids from dbt's logs, and publishes the serving copy whole. An audit row
per erasure says what was removed from each store, with no personal data in it.

**Tombstones** keep only a keyed hash of each identifier: `sha256("<key>:<kind>:<value>")`,
the key being LAYERCODE_PRIVACY_KEY or, unset, a random key kept in `<data>/privacy/key`
(mode 0600). The ingest drops every event whose session, conversation or phone number has one
(a late webhook, a replayed landing file) and rewrites the landed file without it, the REST
backfill drops such records, the express result path never analyses nor sends such a call,
and the outbox takes no new message for an erased session.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from layercode_pipeline.contract.minimise import PHONE_HASH_PREFIX, phone_hash
from layercode_pipeline.landing.erase import (
    erase_landing_files,
    erase_landing_objects,
    rewrite_without,
)
from layercode_pipeline.lib.erasure_ledger import ErasureLedger, keyed_hash

KINDS = ("session", "conversation", "phone")
E164 = re.compile(r"^\+[1-9]\d{6,14}$")
# a session or conversation id: what Layercode's ids are made of (no spaces, no quotes)
IDENTIFIER = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")


@dataclass(frozen=True)
class Selector:
    kind: str  # session / conversation / phone
    value: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown identifier kind {self.kind!r} (session, conversation or phone)")
        if not self.value or not self.value.strip():
            raise ValueError(f"an empty {self.kind} identifier")
        if self.kind == "phone":
            if not (E164.match(self.value) or self.value.startswith(PHONE_HASH_PREFIX)):
                raise ValueError(f"{self.value!r} is not an E.164 phone number (+ and 7 to 15 digits)")
        elif not IDENTIFIER.match(self.value):
            raise ValueError(f"{self.value!r} is not a {self.kind} id (letters, digits and _ . : - only)")

    def __str__(self) -> str:
        return f"{self.kind} {self.value}"


def read_selectors(path: Path) -> list[Selector]:
    """One selector per line: `session:<id>`, `conversation:<id>` or `phone:<E.164>` (a bare
    `+...` is a phone number, any other bare id a session id); `#` starts a comment. A line of
    an unknown kind (`phon:+49...`) or that is no id at all (`bogus line`) is an error that
    names the file and line."""
    out = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        kind, sep, value = text.partition(":")
        if not sep or (kind not in KINDS and not re.fullmatch(r"[A-Za-z]+", kind)):
            kind, value = ("phone" if text.startswith("+") else "session"), text
        try:
            out.append(Selector(kind, value.strip()))
        except ValueError as exc:
            raise ValueError(f"{path}:{number}: {exc}") from None
    return out


class UnmatchedIdentifiers(LookupError):
    """Identifiers that matched no session: nothing was erased."""

    def __init__(self, unmatched: list[Selector], matched: dict[Selector, int]):
        self.unmatched = unmatched
        self.matched = matched
        super().__init__(f"{len(unmatched)} identifier(s) matched no session: nothing was erased")


@dataclass
class ErasureReport:
    erasure_id: str
    erased_at: datetime
    sessions: list[str]
    conversations: list[str]
    removed: dict[str, int] = field(default_factory=dict)
    matched: dict[Selector, int] = field(default_factory=dict)  # per identifier: sessions it named
    resumed: bool = False  # an earlier erasure, stopped half-way, finished now

    def add(self, store: str, n: int) -> None:
        if n:
            self.removed[store] = self.removed.get(store, 0) + n


def _with_hashed_phones(key: str, selectors: list[Selector]) -> dict[Selector, list[Selector]]:
    """Each selector with the forms it is stored under: a phone number also as its keyed hash
    (LAYERCODE_HASH_PHONE_NUMBERS stores that instead)."""
    return {
        s: [s, Selector("phone", phone_hash(key, s.value))] if s.kind == "phone" and E164.match(s.value) else [s]
        for s in selectors
    }


def _sessions_of(con: duckdb.DuckDBPyConnection, selector: Selector) -> set[str]:
    """The sessions one selector names, from the webhooks and the REST records."""
    if selector.kind == "session":
        sql = """select session_id from raw.layercode_events where session_id = $v
                 union select session_id from raw.layercode_session_details where session_id = $v"""
    elif selector.kind == "conversation":
        sql = """select session_id from raw.layercode_events where conversation_id = $v and session_id is not null
                 union select session_id from raw.layercode_session_details where record->>'$.conversation_id' = $v"""
    else:
        sql = """select session_id from raw.layercode_events where session_id is not null
                   and (json_extract_string(body, '$.from_phone_number') = $v
                        or json_extract_string(body, '$.to_phone_number') = $v)
                 union select session_id from raw.layercode_session_details
                 where record->>'$.from_phone_number' = $v or record->>'$.to_phone_number' = $v"""
    return {r[0] for r in con.execute(sql, {"v": selector.value}).fetchall() if r[0]}


def resolve(
    con: duckdb.DuckDBPyConnection, key: str, selectors: list[Selector]
) -> tuple[set[str], set[str], dict[Selector, int]]:
    """Every session (and conversation) the selectors name, and how many sessions each named."""
    sessions: set[str] = set()
    matched: dict[Selector, int] = {}
    for selector, forms in _with_hashed_phones(key, selectors).items():
        found = set().union(*(_sessions_of(con, f) for f in forms))
        matched[selector] = len(found)
        sessions |= found
    conversations = {s.value for s in selectors if s.kind == "conversation" and matched.get(s)}
    if sessions:  # and the conversations those sessions belong to
        conversations |= {
            r[0]
            for r in con.execute(
                "select distinct conversation_id from raw.layercode_events "
                "where session_id in (select unnest(?::varchar[])) and conversation_id is not null",
                [sorted(sessions)],
            ).fetchall()
        }
    return sessions, conversations, matched


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


def plan_erasure(con: duckdb.DuckDBPyConnection, sessions: set[str], conversations: set[str]) -> dict[str, Any]:
    """What the file stores hold of the sessions, found before their rows go: the plan the
    ledger keeps until the erasure is done."""
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
    return {
        "sessions": ids,
        "conversations": sorted(conversations),
        "files": files,
        "recordings": recordings,
        "agents": agents,
    }


def erase_from_warehouse(
    con: duckdb.DuckDBPyConnection,
    report: ErasureReport,
    *,
    tombstones: dict[str, str],
    requested_by: str,
    selector_kinds: list[str],
    selector_hashes: list[str],
) -> None:
    """Tombstones, then every warehouse row of the report's sessions, and the audit row, in one
    transaction (again for an erasure finished later: each step finds what is left)."""
    ids, conversations = report.sessions, report.conversations
    con.execute("begin transaction")
    try:
        if tombstones:
            con.executemany(
                "insert or ignore into raw.erasure_tombstones values (?, ?, ?, ?)",
                [(h, kind, report.erasure_id, report.erased_at) for h, kind in tombstones.items()],
            )
        if ids:
            for table in _tables_with(con, "session_id"):
                n = con.execute(
                    f"delete from {table} where session_id in (select unnest(?::varchar[]))", [ids]
                ).fetchone()
                report.add(table, int(n[0]) if n else 0)
        if conversations:
            for table in set(_tables_with(con, "conversation_id")) - set(_tables_with(con, "session_id")):
                n = con.execute(
                    f"delete from {table} where conversation_id in (select unnest(?::varchar[]))", [conversations]
                ).fetchone()
                report.add(table, int(n[0]) if n else 0)
        if ids:  # a rejected line may quote the session
            n = con.execute(
                "delete from raw.layercode_rejects where raw_line is not null "
                "and list_has_any(regexp_extract_all(raw_line, '[A-Za-z0-9_.:-]+'), ?::varchar[])",
                [ids],
            ).fetchone()
            report.add("raw.layercode_rejects", int(n[0]) if n else 0)
        con.execute("delete from raw.erasure_audit where erasure_id = ?", [report.erasure_id])
        con.execute(
            "insert into raw.erasure_audit values (?, ?, ?, ?, ?, ?, ?)",
            [
                report.erasure_id,
                report.erased_at,
                requested_by,
                ",".join(sorted(set(selector_kinds))),
                sorted(selector_hashes),
                len(ids),
                json.dumps(report.removed),
            ],
        )
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        raise
    con.execute("checkpoint")  # the deleted rows leave the database file now, not at some later checkpoint


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


def scrub_files(root: Path, session_ids: set[str]) -> int:
    """Replace the session ids in every file under `root` (dbt's logs and run results of the
    pipeline's builds) with `<erased>`. Returns how many files changed."""
    if not root.is_dir() or not session_ids:
        return 0
    needles = [s.encode() for s in session_ids]
    changed = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if any(n in data for n in needles):
            for n in needles:
                data = data.replace(n, ERASED.encode())
            tmp = path.with_name(f".{path.name}.{os.getpid()}.scrub")
            tmp.write_bytes(data)
            os.replace(tmp, path)
            changed += 1
    return changed


def result_endpoints_for_erasure(configured: list, outbox_path: Path | None) -> list:
    """Who gets `call.erased`: the endpoints configured here and every endpoint the outbox ever
    queued a message for (so a `forget` started where LAYERCODE_RESULT_WEBHOOKS is not set still
    tells them; the process that delivers signs with its own configuration)."""
    from layercode_pipeline.lib.result_webhooks.outbox import Outbox

    by_url = {e.url: e for e in configured}
    if outbox_path is not None and outbox_path.exists():
        for known in Outbox(outbox_path).known_endpoints():
            by_url.setdefault(known.url, known)
    return list(by_url.values())


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
    allow_unmatched: bool = False,
) -> list[ErasureReport]:
    """Finish any erasure an earlier `forget` left half-done, then forget the sessions
    `selectors` name in every store (see the module's docstring). Returns a report per erasure
    (the resumed ones first). Raises UnmatchedIdentifiers, having done nothing new, when a
    selector names no session and `allow_unmatched` is false."""
    from layercode_pipeline.lib.ingest import pending_segments

    ledger = ErasureLedger.under(paths.data_dir)
    stores = _FileStores(
        warehouse,
        paths,
        recordings,
        outbox_path,
        result_endpoints_for_erasure(endpoints or [], outbox_path),
        object_landing,
        dagster_home,
    )
    reports = [stores.finish(ledger, unfinished) for unfinished in ledger.unfinished()]
    if not selectors:
        return reports
    with warehouse.open_for_writing() as con:
        sessions, conversations, matched = resolve(con, key, selectors)
        unmatched = [s for s in selectors if not matched[s]]
        if unmatched and not allow_unmatched:
            raise UnmatchedIdentifiers(unmatched, matched)
        report = ErasureReport(uuid.uuid4().hex, datetime.now(UTC), sorted(sessions), sorted(conversations))
        report.matched = matched
        plan = plan_erasure(con, sessions, conversations)
        if sessions and paths.landing.is_dir():  # a late event of an erased session may wait there
            plan["files"] += [str(p) for p in pending_segments(con, paths.landing)]
        forms = [f for group in _with_hashed_phones(key, selectors).values() for f in group]
        tombstones = {keyed_hash(key, "session", s): "session" for s in sessions}
        tombstones |= {keyed_hash(key, "conversation", c): "conversation" for c in conversations}
        tombstones |= {keyed_hash(key, f.kind, f.value): f.kind for f in forms}
        plan |= {
            "erased_at": report.erased_at.isoformat(),
            "selector_kinds": [s.kind for s in selectors],
            "selector_hashes": [keyed_hash(key, s.kind, s.value) for s in forms],
            "tombstones": tombstones,
        }
        # recorded before any store is touched: a stop from here on is finished by the next forget
        ledger.begin(report.erasure_id, requested_by, tombstones, plan)
    reports.append(stores.finish(ledger, _unfinished(ledger, report.erasure_id), report=report))
    return reports


def _unfinished(ledger: ErasureLedger, erasure_id: str):
    return next(u for u in ledger.unfinished() if u.erasure_id == erasure_id)


@dataclass
class _FileStores:
    warehouse: Any
    paths: Any
    recordings: Any
    outbox_path: Path | None
    endpoints: list
    object_landing: Any
    dagster_home: Path | None

    def finish(self, ledger: ErasureLedger, unfinished, report: ErasureReport | None = None) -> ErasureReport:
        """Carry out (or finish) one recorded erasure in every store, then mark it done."""
        from layercode_pipeline.lib.result_webhooks.messages import erased_message
        from layercode_pipeline.lib.result_webhooks.outbox import Outbox
        from layercode_pipeline.lib.serving_copy import STATE_FILE, publish_serving_copy

        plan = unfinished.plan
        if report is None:
            report = ErasureReport(
                unfinished.erasure_id,
                datetime.fromisoformat(plan["erased_at"]),
                plan["sessions"],
                plan["conversations"],
                resumed=True,
            )
        with self.warehouse.open_for_writing() as con:
            erase_from_warehouse(
                con,
                report,
                tombstones=plan["tombstones"],
                requested_by=unfinished.requested_by,
                selector_kinds=plan["selector_kinds"],
                selector_hashes=plan["selector_hashes"],
            )
        ids = set(report.sessions)
        if ids:
            # the deleted rows' bytes stay in the file's free blocks: the file is written anew
            if self.warehouse.rewrite_file():
                report.add("warehouse file rewritten", 1)
            report.add("landing events", erase_landing_files(plan["files"], ids))
            if self.object_landing is not None:
                report.add("landing events", erase_landing_objects(self.object_landing, plan["files"], ids))
            report.add("quarantine files", erase_quarantine(self.paths.quarantine, ids))
            report.add("recordings", sum(self.recordings.delete(uri) for uri in plan["recordings"]))
            reviews = self.paths.reviews
            for review_file in sorted(reviews.glob("reviews-*.jsonl")) if reviews.is_dir() else []:
                report.add("reviews", rewrite_without(review_file, ids))
            report.add(
                "express answers",
                erase_from_sqlite(
                    self.paths.data_dir / "enrichment" / "express_answers.sqlite3",
                    [("delete from answers where " + " or ".join(["instr(row, ?) > 0"] * len(ids)), sorted(ids))],
                ),
            )
            if self.outbox_path is not None:
                marks = ",".join("?" * len(ids))
                report.add(
                    "result messages",
                    erase_from_sqlite(
                        self.outbox_path,
                        [
                            (
                                f"delete from deliveries where message_id in (select id from messages where "
                                f"session_id in ({marks}) and type <> 'call.erased')",
                                sorted(ids),
                            ),
                            (
                                f"delete from messages where session_id in ({marks}) and type <> 'call.erased'",
                                sorted(ids),
                            ),
                        ],
                    ),
                )
                # the customer's product deletes its copy too; the outbox takes no new message
                # for these sessions (with no endpoint anywhere, only their hashes are kept)
                outbox = Outbox(self.outbox_path)
                if self.endpoints:
                    report.add(
                        "call.erased queued",
                        outbox.enqueue(
                            [erased_message(sid, plan["agents"].get(sid), report.erased_at) for sid in sorted(ids)],
                            self.endpoints,
                        ),
                    )
                outbox.refuse_sessions(ids)
            report.add("dbt logs", scrub_files(self.paths.data_dir / "dbt", ids))
            if self.dagster_home is not None:
                report.add("dagster records", scrub_dagster_home(self.dagster_home, ids))
            serving = self.paths.serving
            if (serving / "analytics.duckdb").exists():  # a whole new copy and new Parquet files
                (serving / STATE_FILE).unlink(missing_ok=True)
                publish_serving_copy(self.warehouse, serving)
                report.add("serving copy republished", 1)
        with self.warehouse.open_for_writing() as con:  # what the file stores removed, for the audit
            con.execute(
                "update raw.erasure_audit set removed = ? where erasure_id = ?",
                [json.dumps(report.removed), report.erasure_id],
            )
        ledger.finish(report.erasure_id)
        return report
