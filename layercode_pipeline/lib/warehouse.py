"""The warehouse seam: where the warehouse is, how to reach it, its raw DDL, and the writers' lock.

`Warehouse` is the one object every asset, the CLI and the demo use: a local DuckDB file
today, a MotherDuck database (`md:<name>`) as a configuration change (`LAYERCODE_WAREHOUSE`).
It knows how to connect (waiting while a process outside the pipeline holds a local file),
the writers' lock, what dbt needs (`dbt_vars`), and how to attach the warehouse to another
connection (the serving copy reads it that way).

DuckDB allows one writing process per file. Every pipeline writer goes through
`Warehouse.open_for_writing()`, which takes an exclusive `flock` first, so a second writer
(another Dagster run, the backfill CLI) waits its turn instead of failing with DuckDB's lock
error. BI tools read the published copy in `serving/`, never the warehouse.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import duckdb

from layercode_pipeline.config import Settings, StorageConfig
from layercode_pipeline.landing.durable import fsync_dir, fsync_file

RAW_DDL = """
create schema if not exists raw;
create table if not exists raw.layercode_events (
    event_key        varchar not null,   -- dedupe identity: type + identifiers, or the content hash
    received_at      timestamptz not null,
    agent_id         varchar,
    event_type       varchar not null,
    content_sha256   varchar not null,
    session_id       varchar,
    conversation_id  varchar,
    turn_id          varchar,
    -- the exact raw body Layercode sent: JSON text, checked at ingest (a VARCHAR: a JSON column
    -- would parse every body once more). ZSTD: most of the table's bytes; DuckDB's default
    -- string analysis (dictionary/FSST) took 2.7x as long to write it (bench/ingest_bench.py).
    body             varchar not null using compression zstd,
    validation_error varchar,            -- set when the listener kept a malformed known type
    writer_id        varchar,
    source           varchar not null,   -- 'webhook'
    source_file      varchar not null,
    ingested_at      timestamptz not null,
    -- md5_number(event_key): redeliveries of ingested events are found by this 16-byte column,
    -- a scan about 6x cheaper per million events of history than comparing the key strings
    event_key_md5    uhugeint not null,
    -- the request headers the listener's allow-list kept (Layercode's custom headers among them)
    headers          json
);
create table if not exists raw.layercode_rejects (
    source_file  varchar not null,
    line_number  bigint,
    reason       varchar not null,
    raw_line     varchar,
    rejected_at  timestamptz not null
);
create table if not exists raw.layercode_ingested_files (
    path        varchar primary key,
    size_bytes  bigint not null,
    rows        bigint not null,
    inserted    bigint not null,
    duplicates  bigint not null,
    rejects     bigint not null,
    ingested_at timestamptz not null
);
-- Landing partitions whose every sealed segment is ingested, as of the directory's mtime
-- (any file created, sealed or removed in it changes that): later runs do not list them
-- again, so a run's cost follows the new data, not the number of partitions in history.
create table if not exists raw.layercode_clean_partitions (
    partition   varchar primary key,
    mtime_ns    bigint not null,
    checked_at  timestamptz not null
);
-- Object-store landing (s3://...): the ingest lists hour prefixes from `listed_from` (minus a
-- lookback) on, so its listing cost follows the time since the last run, not history.
create table if not exists raw.layercode_listing_cursors (
    store_url    varchar primary key,
    listed_from  timestamptz not null,
    updated_at   timestamptz not null
);
create table if not exists raw.layercode_session_details (
    agent_id     varchar not null,
    session_id   varchar not null,
    http_status  integer not null,      -- 200, or 404 (recorded as not found)
    record       json,                  -- the REST record as it came
    reason       varchar,               -- why it was fetched: no_session_end, recording_unresolved, requested
    fetched_at   timestamptz not null
);
-- REST calls that still failed after their retries (a 5xx that never cleared, a timeout, an
-- answer that was not JSON): one row per failure, so they can be queried, not only read in
-- run logs. The session is asked again on the next run.
create table if not exists raw.layercode_api_errors (
    agent_id     varchar not null,
    session_id   varchar not null,
    endpoint     varchar not null,      -- session_details
    reason       varchar,               -- why it was asked: no_session_end, recording_unresolved, requested
    error        varchar not null,
    failed_at    timestamptz not null
);
create table if not exists raw.layercode_recordings (
    session_id   varchar not null,
    agent_id     varchar not null,
    status       varchar not null,      -- downloaded / not_ready / failed / error
    path         varchar,
    bytes        bigint,
    sha256       varchar,
    sample_rate  integer,
    channels     integer,
    duration_s   double,
    fetched_at   timestamptz not null,
    error        varchar,
    encoding     varchar,              -- pcm / mulaw / alaw (from the WAV header)
    -- the audio checks (lib/audio.py), null until measured
    silence_share      double,
    longest_silence_s  double,
    clipped_share      double,
    loudness_dbfs      double,
    peak_dbfs          double
);
-- The org's agents from GET /v1/agents: one row per agent and version of its record (a new
-- row only when the record changed), with when that version was first and last listed.
create table if not exists raw.layercode_agents (
    agent_id       varchar not null,
    record         json not null,      -- the agent as the API listed it
    record_sha256  varchar not null,
    first_seen_at  timestamptz not null,
    last_seen_at   timestamptz not null,
    primary key (agent_id, record_sha256)
);
-- erasures (lib/privacy.py): keyed hashes of erased identifiers, and one audit row per erasure
create table if not exists raw.erasure_tombstones (
    key_hash   varchar primary key,   -- sha256("<privacy key>:<kind>:<value>"): never the identifier
    kind       varchar not null,      -- session / conversation / phone
    erasure_id varchar not null,
    erased_at  timestamptz not null
);
create table if not exists raw.erasure_audit (
    erasure_id     varchar primary key,
    erased_at      timestamptz not null,
    requested_by   varchar not null,   -- cli / dagster / retention
    selector_kind  varchar not null,   -- what the request named (several kinds: comma-separated)
    selector_hashes varchar[] not null,
    sessions       integer not null,
    removed        json not null       -- rows or files removed per store
);

-- the sessions whose text has expired (lib/retention.py): each is emptied once, whenever it
-- arrived (a call backfilled late, with an old start, expires on the next run)
create table if not exists raw.retention_expired (
    session_id  varchar not null,
    class       varchar not null,      -- text
    expired_at  timestamptz not null,
    primary key (session_id, class)
);
-- reviews written by the dashboard's workbench (lib/reviews.py), one row per review
create table if not exists raw.reviews (
    review_id      varchar primary key,
    session_id     varchar not null,
    reviewer       varchar not null,
    reviewed_at    timestamptz not null,
    caller_name    varchar,
    outcome        varchar not null,
    sentiment      varchar not null,
    topics         varchar[] not null,
    quality_score  integer not null,
    comment        varchar,
    flagged_turns  json,
    shown          json,
    source_file    varchar not null,
    ingested_at    timestamptz not null
);
-- a line of a review file that is not a valid review (hand-edited, a future version's field)
create table if not exists raw.review_rejects (
    source_file  varchar not null,
    byte_offset  bigint not null,
    error        varchar not null,
    line         varchar,
    rejected_at  timestamptz not null
);
-- how far each review file has been read (whole lines only)
create table if not exists raw.review_files (
    source_file  varchar primary key,
    bytes_read   bigint not null,
    read_at      timestamptz not null
);

-- the result webhook outbox's deliveries, mirrored by the result_webhooks asset
create table if not exists raw.result_webhook_deliveries (
    message_id        varchar not null,
    event_type        varchar not null,
    session_id        varchar not null,
    agent_id          varchar,
    endpoint          varchar not null,   -- the endpoint URL without its query string
    status            varchar not null,   -- pending / delivered / dead
    attempts          integer not null,
    created_at        timestamptz not null,
    first_attempt_at  timestamptz,
    last_attempt_at   timestamptz,
    delivered_at      timestamptz,
    next_attempt_at   timestamptz,
    last_status       integer,
    last_error        varchar,
    mirrored_at       timestamptz not null
);
"""


def ensure_raw_schema(con: duckdb.DuckDBPyConnection) -> None:
    """The raw tables, and the enrichment store's: every table the dbt sources name exists
    before any data arrives, so the models build on an empty warehouse."""
    from layercode_pipeline.lib.enrichment.store import ensure_enrichment_schema

    con.execute(RAW_DDL)
    # Warehouses created before event_key_md5 existed: add it and fill it once.
    # (A bind check, not information_schema: that query cost more than the rest of the set-up.)
    try:
        con.execute("select event_key_md5 from raw.layercode_events limit 0")
    except duckdb.BinderException:
        con.execute("alter table raw.layercode_events add column event_key_md5 uhugeint")
        con.execute("update raw.layercode_events set event_key_md5 = md5_number(event_key)")
    # columns added since the first release: (table, column, type), appended in place
    for table, column, type_ in (
        ("raw.layercode_events", "headers", "json"),
        ("raw.layercode_recordings", "encoding", "varchar"),
        *(
            ("raw.layercode_recordings", column, "double")
            for column in ("silence_share", "longest_silence_s", "clipped_share", "loudness_dbfs", "peak_dbfs")
        ),
    ):
        add_missing_column(con, table, column, type_)
    ensure_enrichment_schema(con)


def add_missing_column(con: duckdb.DuckDBPyConnection, table: str, column: str, type_: str) -> None:
    try:
        con.execute(f"select {column} from {table} limit 0")
    except duckdb.BinderException:
        con.execute(f"alter table {table} add column {column} {type_}")


def _try_flock(fh: Any) -> bool:
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


@contextlib.contextmanager
def warehouse_lock(lock_path: Path, timeout_s: float = 3600.0, *, first: bool = False) -> Iterator[None]:
    """An exclusive `flock` on `lock_path`, waited for (a pipeline writer holds it).

    `first`: this writer goes before the others that are waiting. A run's serving publish asks
    so: its build lets the warehouse go as soon as dbt is done (the next run's ingest works
    while Dagster records the build's results), and the publish then takes it back ahead of
    the next run's later steps, which would otherwise hold it through their whole build. A
    `first` writer holds a gate (`<lock>.gate`) while it waits; the others take the lock only
    through an open gate."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(lock_path, "a+")  # noqa: SIM115 - closed by _release
    deadline = time.monotonic() + timeout_s

    def give_up_if_late() -> None:
        if time.monotonic() <= deadline:
            return
        fh.close()
        raise TimeoutError(f"another pipeline writer has held {lock_path} for {timeout_s:.0f} s")

    with open(lock_path.with_name(lock_path.name + ".gate"), "a+") as gate:
        while True:
            if _try_flock(gate):
                if first:  # the gate stays closed to the others until this writer has the lock
                    try:
                        while not _try_flock(fh):
                            give_up_if_late()
                            time.sleep(0.05)
                    finally:
                        fcntl.flock(gate, fcntl.LOCK_UN)
                    break
                taken = _try_flock(fh)
                fcntl.flock(gate, fcntl.LOCK_UN)
                if taken:
                    break
            give_up_if_late()
            time.sleep(0.1)
    try:
        yield
    finally:
        _release(fh)


def _release(fh: Any) -> None:
    fcntl.flock(fh, fcntl.LOCK_UN)
    fh.close()


# Long enough for a BI tool that opens and closes the file to let go; short enough that a tool
# holding it for good fails the run with a message that says what to do.
DEFAULT_OPEN_TIMEOUT_S: float = Settings.default("warehouse_open_timeout_s")
T = TypeVar("T")
_HOLDER = re.compile(r"Conflicting lock is held in (?P<program>.+?) \(PID (?P<pid>\d+)\)")


class WarehouseBusy(RuntimeError):
    """Another process (not a pipeline writer: those queue on the writer lock) holds the file."""


def _holder(error: str) -> str:
    match = _HOLDER.search(error)
    if match is None:
        return "another process"
    return f"PID {match['pid']} ({match['program']})"


def retry_while_locked(
    action: Callable[[], T], target: Path | str, *, timeout_s: float = DEFAULT_OPEN_TIMEOUT_S, poll_s: float = 0.25
) -> T:
    """Run `action` (a connect or an attach of `target`), again while another process holds the
    file's lock (a BI tool or a notebook opened the warehouse itself), for up to `timeout_s`;
    then `WarehouseBusy`, naming the holder and what to do."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return action()
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise
            if time.monotonic() >= deadline:
                raise WarehouseBusy(
                    f"{target} has been held open by {_holder(str(exc))} for {timeout_s:.0f} s, so the pipeline "
                    f"cannot use it. That is not a pipeline writer (they queue): close it, and point BI tools "
                    f"and notebooks at serving/analytics.duckdb, the copy published for readers. "
                    f"(LAYERCODE_WAREHOUSE_OPEN_TIMEOUT_S sets the wait.)"
                ) from None
            time.sleep(poll_s)


def scalar(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> Any:
    """The first column of the first row `sql` returns (a count, a setting, `now()`)."""
    row = con.execute(sql, params or []).fetchone()
    if row is None:
        raise LookupError(f"no row: {sql[:80]}")
    return row[0]


def sources_fingerprint(con: duckdb.DuckDBPyConnection, tables: list[tuple[str, str]], salt: str = "") -> str:
    """A digest of what dbt reads: each source table's (schema, name) row count and the newest
    value of each of its timestamp columns (every load stamps one), plus `salt` (dbt's vars and
    project). Equal digests: no source gained, lost or reloaded a row in between. A table not
    created yet counts as empty."""
    stamps: dict[tuple[str, str], list[str]] = {}
    for schema, table, column in con.execute(
        "select schema_name, table_name, column_name from duckdb_columns() "
        "where database_name = current_database() and data_type in ('TIMESTAMP WITH TIME ZONE', 'TIMESTAMP') "
        "order by column_index"
    ).fetchall():
        stamps.setdefault((schema, table), []).append(column)
    existing = set(con.execute("select schema_name, table_name from duckdb_tables() "
                               "where database_name = current_database()").fetchall())  # fmt: skip
    parts = [salt]
    for schema, table in sorted(tables):
        row: Any = None
        if (schema, table) in existing:
            measures = ["count(*)::varchar", *(f'max("{c}")::varchar' for c in stamps.get((schema, table), []))]
            row = con.execute(f'select {", ".join(measures)} from "{schema}"."{table}"').fetchone()
        parts.append(f"{schema}.{table}:{row}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def sql_string(value: Path | str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


MOTHERDUCK_PREFIX = "md:"


@dataclass(frozen=True)
class Warehouse:
    """The warehouse: a local DuckDB file, or a MotherDuck database (`md:<name>`).

    What differs for MotherDuck, and only here:
    - `connect` opens `md:<name>` with the token from the settings (`MOTHERDUCK_TOKEN`); DuckDB
      loads its `motherduck` extension for it (downloaded once, so the host needs network);
    - there is no file for a BI tool to hold, so no waiting on one; MotherDuck accepts several
      writers, and the writers' lock (a file in the data directory) still queues this host's
      writers so runs do not interleave their transactions; across hosts the Dagster pool
      (`layercode_warehouse`, limit 1) is the guard;
    - dbt's profile takes the same target as `path` (dbt-duckdb opens `md:` paths, and the
      `motherduck` extension reads `MOTHERDUCK_TOKEN` from dbt's environment, which it
      inherits from the run: the token is never passed on a command line);
    - the serving copy attaches `md:<name>` and is still written locally, so BI tools read it
      as before (or read MotherDuck directly, with their own MotherDuck token).
    """

    target: str  # an absolute file path, or md:<database>
    lock_path: Path  # the writers' lock, a file on this host
    open_timeout_s: float = DEFAULT_OPEN_TIMEOUT_S
    motherduck_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Warehouse:
        """The warehouse seam for this configuration (a local file or MotherDuck)."""
        return cls.from_config(settings.storage())

    @classmethod
    def from_config(cls, storage: StorageConfig) -> Warehouse:
        return cls.at(
            storage.warehouse_target,
            data_dir=storage.data_dir,
            open_timeout_s=storage.open_timeout_s,
            motherduck_token=storage.motherduck_token,
        )

    @classmethod
    def at(
        cls,
        target: str | Path | None,
        *,
        data_dir: Path,
        open_timeout_s: float = DEFAULT_OPEN_TIMEOUT_S,
        motherduck_token: str | None = None,
    ) -> Warehouse:
        """`target` as configured: a path (relative to the working directory), `md:<name>`, or
        None for `<data dir>/warehouse.duckdb`."""
        data_dir = Path(data_dir).expanduser().resolve()
        text = str(target) if target else ""
        if text.startswith(MOTHERDUCK_PREFIX):
            name = text[len(MOTHERDUCK_PREFIX) :] or "my_db"
            return cls(MOTHERDUCK_PREFIX + name, data_dir / f"motherduck-{name}.lock", open_timeout_s, motherduck_token)
        path = Path(text).expanduser().resolve() if text else data_dir / "warehouse.duckdb"
        return cls(str(path), path.with_name(path.name + ".lock"), open_timeout_s, motherduck_token)

    @property
    def is_motherduck(self) -> bool:
        return self.target.startswith(MOTHERDUCK_PREFIX)

    @property
    def path(self) -> Path | None:
        """The local file, or None on MotherDuck."""
        return None if self.is_motherduck else Path(self.target)

    def _config(self) -> dict[str, Any]:
        return {"motherduck_token": self.motherduck_token} if self.is_motherduck and self.motherduck_token else {}

    def connect(self, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
        """A connection, waiting while a process outside the pipeline holds a local file."""
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        return retry_while_locked(
            lambda: duckdb.connect(self.target, read_only=read_only, config=self._config()),
            self.target,
            timeout_s=self.open_timeout_s,
        )

    @contextlib.contextmanager
    def lock(self, timeout_s: float = 3600.0, *, first: bool = False) -> Iterator[None]:
        """The writers' lock: held by every pipeline writer, dbt's build and the serving publish
        (`first`: ahead of the writers already waiting, see `warehouse_lock`)."""
        with warehouse_lock(self.lock_path, timeout_s, first=first):
            yield

    @contextlib.contextmanager
    def open_for_writing(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The warehouse for writing, after the writers' lock; raw and enrichment tables ensured."""
        with self.lock():
            con = self.connect()
            try:
                ensure_raw_schema(con)
                yield con
            finally:
                con.close()

    def rewrite_file(self) -> bool:
        """Write the warehouse file anew (COPY FROM DATABASE into a new file, renamed over the
        old one, under the writers' lock): DuckDB leaves a deleted row's bytes in the file's
        free blocks, where a byte search finds an erased caller's words. False on MotherDuck
        (no file here). Costs about a copy of the file (0.13 s for a 6.8 MB demo warehouse)."""
        path = self.path
        if path is None or not path.exists():
            return False
        fresh = path.with_name(f".{path.name}.{os.getpid()}.rewrite")
        fresh.unlink(missing_ok=True)
        with self.lock():
            writer = self.connect()  # no write-ahead log may outlive the file it belongs to
            try:
                writer.execute("checkpoint")
            finally:
                writer.close()
            con = duckdb.connect()
            try:
                retry_while_locked(
                    lambda: con.execute(f"attach {sql_string(path)} as old_file (read_only)"),
                    self.target,
                    timeout_s=self.open_timeout_s,
                )
                con.execute(f"attach {sql_string(fresh)} as new_file")
                con.execute("copy from database old_file to new_file")
                con.execute("detach new_file")
                con.execute("detach old_file")
            except BaseException:
                fresh.unlink(missing_ok=True)
                raise
            finally:
                con.close()
            fsync_file(fresh)
            os.replace(fresh, path)
            fsync_dir(path.parent)
        return True

    def attach(self, con: duckdb.DuckDBPyConnection, alias: str, *, read_only: bool = True) -> None:
        """Attach the warehouse to another connection as `alias` (the serving copy reads it so)."""
        if self.is_motherduck and self.motherduck_token:
            con.execute("set motherduck_token = ?", [self.motherduck_token])
        mode = " (read_only)" if read_only and not self.is_motherduck else ""
        retry_while_locked(
            lambda: con.execute(f"attach {sql_string(self.target)} as {alias}{mode}"),
            self.target,
            timeout_s=self.open_timeout_s,
        )

    def dbt_vars(self) -> dict[str, str]:
        """What dbt's profile needs (`profiles.yml` reads `warehouse_path`)."""
        return {"warehouse_path": self.target}

    def __str__(self) -> str:
        return self.target
