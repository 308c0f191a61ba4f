"""The warehouse's raw layer: DDL in one place, and the single-writer lock.

DuckDB allows one writing process per file. Every pipeline writer goes through
`open_warehouse()`, which takes an exclusive `flock` on `<warehouse>.lock` first, so a
second writer (another Dagster run, the backfill CLI) waits its turn instead of failing
with DuckDB's lock error. BI tools read the published copy in `serving/`, never this file.
"""

from __future__ import annotations

import contextlib
import fcntl
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import duckdb

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
    encoding     varchar               -- pcm / mulaw / alaw (from the WAV header)
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
create schema if not exists enrichment;
create table if not exists enrichment.session_enrichments (
    session_id         varchar not null,
    agent_id           varchar,
    cache_key          varchar not null,  -- sha256(transcript, prompt version, schema version, model)
    transcript_sha256  varchar not null,
    provider           varchar not null,  -- openai / offline
    model              varchar not null,
    prompt_version     varchar not null,
    schema_version     varchar not null,
    summary            varchar,
    caller_name        varchar,
    sentiment          varchar,
    sentiment_score    double,
    outcome            varchar,
    topics             json,
    quality_score      integer,
    quality_rationale  varchar,
    compliance_flags   json,
    action_items       json,
    custom_fields      json,
    input_tokens       integer,
    output_tokens      integer,
    cost_usd           double,
    latency_ms         double,
    error              varchar,
    enriched_at        timestamptz not null
);
"""


def ensure_raw_schema(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(RAW_DDL)
    # Warehouses created before event_key_md5 existed: add it and fill it once.
    # (A bind check, not information_schema: that query cost more than the rest of the set-up.)
    try:
        con.execute("select event_key_md5 from raw.layercode_events limit 0")
    except duckdb.BinderException:
        con.execute("alter table raw.layercode_events add column event_key_md5 uhugeint")
        con.execute("update raw.layercode_events set event_key_md5 = md5_number(event_key)")
    # columns added since the first release: (table, column, type), appended in place
    for table, column, type_ in (("raw.layercode_events", "headers", "json"),
                                 ("raw.layercode_recordings", "encoding", "varchar")):
        try:
            con.execute(f"select {column} from {table} limit 0")
        except duckdb.BinderException:
            con.execute(f"alter table {table} add column {column} {type_}")


@contextlib.contextmanager
def warehouse_lock(path: Path, timeout_s: float = 3600.0) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a+") as fh:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another pipeline writer has held {path} for {timeout_s:.0f} s") from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# Long enough for a BI tool that opens and closes the file to let go; short enough that a tool
# holding it for good fails the run with a message that says what to do.
DEFAULT_OPEN_TIMEOUT_S = 60.0
T = TypeVar("T")
_HOLDER = re.compile(r"Conflicting lock is held in (?P<program>.+?) \(PID (?P<pid>\d+)\)")


class WarehouseBusy(RuntimeError):
    """Another process (not a pipeline writer: those queue on the writer lock) holds the file."""


def _holder(error: str) -> str:
    match = _HOLDER.search(error)
    if match is None:
        return "another process"
    return f"PID {match['pid']} ({match['program']})"


def retry_while_locked(action: Callable[[], T], path: Path, *, timeout_s: float = DEFAULT_OPEN_TIMEOUT_S,
                       poll_s: float = 0.25) -> T:
    """Run `action` (a connect or an attach of `path`), again while another process holds the
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
                    f"{path} has been held open by {_holder(str(exc))} for {timeout_s:.0f} s, so the pipeline "
                    f"cannot use it. That is not a pipeline writer (they queue): close it, and point BI tools "
                    f"and notebooks at serving/analytics.duckdb, the copy published for readers. "
                    f"(LAYERCODE_WAREHOUSE_OPEN_TIMEOUT_S sets the wait.)") from None
            time.sleep(poll_s)


def connect_waiting(path: Path, *, timeout_s: float = DEFAULT_OPEN_TIMEOUT_S,
                    read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """`duckdb.connect(path)`, waiting while another process holds the file (see above)."""
    return retry_while_locked(lambda: duckdb.connect(str(path), read_only=read_only), path, timeout_s=timeout_s)


@contextlib.contextmanager
def open_warehouse(path: Path, *, open_timeout_s: float = DEFAULT_OPEN_TIMEOUT_S) -> Iterator[duckdb.DuckDBPyConnection]:
    """The warehouse for writing, after the writer lock; raw schema ensured."""
    with warehouse_lock(path):
        con = connect_waiting(path, timeout_s=open_timeout_s)
        try:
            ensure_raw_schema(con)
            yield con
        finally:
            con.close()
