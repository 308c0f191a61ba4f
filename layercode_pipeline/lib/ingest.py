"""Landed segments -> `raw.layercode_events`, incrementally and exactly once.

Each batch of new sealed segments is read by DuckDB in one scan and committed in one
transaction together with its rows in `raw.layercode_ingested_files`; a run killed at any
point leaves either the whole batch or none of it, and the next run picks up where the
manifest says. Duplicate deliveries collapse on `event_key`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson

from layercode_pipeline.contract.events import event_key_sql
from layercode_pipeline.contract.landing import OPEN_SUFFIX
from layercode_pipeline.landing.erase import erase_landing_files, erase_landing_objects
from layercode_pipeline.landing.objects import ObjectLanding, list_objects, recent_hour_prefixes
from layercode_pipeline.landing.segments import iter_sealed_segments, partition_mtimes, recover_orphan_segments
from layercode_pipeline.lib.progress import report_progress
from layercode_pipeline.lib.warehouse import scalar, sql_string

# The identity of an event, from the event registry (see contract.events.event_key_sql).
EVENT_KEY_SQL = event_key_sql()


PARSE_SQL = """
        create or replace temp table _parsed as
        with envelope as (
            select source_file,
                   try(json_extract_string(line, ['$.received_at', '$.agent_id', '$.event_type',
                       '$.content_sha256', '$.body', '$.error', '$.writer_id', '$.headers'])) as f,
                   line
            from ({lines_sql}) lines
        ), ids as (
            -- as JSON values, not strings: an identifier that is a number or an object in the
            -- body is no identifier (json_extract_string would turn 42 into '42')
            select source_file, f, line,
                   try(json_extract(f[5], ['$.session_id', '$.conversation_id', '$.turn_id',
                       '$.recording_status'])) as ids
            from envelope
        ), typed as (
            select source_file, line, f is not null as line_ok, try_cast(f[1] as timestamptz) as received_at,
                   f[2] as agent_id, f[3] as event_type, f[4] as content_sha256, f[5] as body,
                   f[6] as validation_error, f[7] as writer_id, f[8] as headers, ids is not null as body_ok,
                   case when json_type(ids[1]) = 'VARCHAR' then ids[1]->>'$' end as session_id,
                   case when json_type(ids[2]) = 'VARCHAR' then ids[2]->>'$' end as conversation_id,
                   case when json_type(ids[3]) = 'VARCHAR' then ids[3]->>'$' end as turn_id,
                   case when json_type(ids[4]) = 'VARCHAR' then ids[4]->>'$' end as recording_status
            from ids
        ), keyed as (
            select * exclude (line, line_ok, body_ok),
                   case
                       when not line_ok then 'line is not valid JSON'
                       when received_at is null then 'envelope has no valid received_at'
                       when event_type is null or content_sha256 is null then 'envelope lacks event_type or content_sha256'
                       when not body_ok then 'body is not valid JSON'
                   end as reject_reason,
                   case when not line_ok or received_at is null or event_type is null or content_sha256 is null
                             or not body_ok then line end as bad_line,
                   {event_key} as event_key
            from typed
        )
        -- the 16-byte hash redeliveries are matched on (see raw.layercode_events.event_key_md5)
        select *, md5_number(event_key) as event_key_md5 from keyed
"""


@dataclass
class IngestResult:
    files: int = 0
    bytes: int = 0
    rows: int = 0
    inserted: int = 0
    duplicates: int = 0
    rejects: int = 0
    erased: int = 0  # events of erased sessions, dropped (lib/privacy.py)
    # file (as the manifest names it) -> the erased sessions whose events it held: the caller
    # rewrites it without them once the batch is committed (landing/erase.py)
    erased_files: dict[str, set[str]] = field(default_factory=dict)
    recovered_segments: int = 0
    partitions_listed: int = 0


# A partition is remembered as clean only if its directory has not changed for this long
# before the run started: a change within the same timestamp tick as the previous one
# could otherwise leave the mtime as it was.
CLEAN_SETTLE_NS = 2_000_000_000


def dirty_partitions(con: duckdb.DuckDBPyConnection, landing_dir: Path) -> list[Path]:
    """Partitions not known to be fully ingested at their current mtime (one stat each)."""
    clean = dict(con.execute("select partition, mtime_ns from raw.layercode_clean_partitions").fetchall())
    return [hour_dir for hour_dir, mtime_ns in partition_mtimes(landing_dir) if clean.get(str(hour_dir)) != mtime_ns]


def pending_segments(
    con: duckdb.DuckDBPyConnection, landing_dir: Path, partitions: list[Path] | None = None
) -> list[Path]:
    """Sealed segments (of every partition, or of `partitions`) not yet in the manifest."""
    sealed = list(iter_sealed_segments(landing_dir, partitions))
    if not sealed:
        return []
    done = {
        row[0]
        for row in con.execute(
            "select path from raw.layercode_ingested_files where path in (select unnest(?::varchar[]))",
            [[str(p) for p in sealed]],
        ).fetchall()
    }
    return [p for p in sealed if str(p) not in done]


def remember_clean_partitions(con: duckdb.DuckDBPyConnection, partitions: list[Path], scan_started_ns: int) -> None:
    """After a run's commits: partitions listed in this run, with nothing left to ingest, no
    segment still open and no change since well before the run started, are skipped until
    their directory changes."""
    rows = []
    for hour_dir in partitions:
        try:
            mtime_ns = hour_dir.stat().st_mtime_ns
            if mtime_ns >= scan_started_ns - CLEAN_SETTLE_NS:
                continue  # changed lately: list it again next run
            if any(name.endswith(OPEN_SUFFIX) for name in os.listdir(hour_dir)):
                continue  # a live writer may still seal a segment here
        except FileNotFoundError:
            continue
        rows.append((str(hour_dir), mtime_ns))
    if rows:
        con.executemany("insert or replace into raw.layercode_clean_partitions values (?, ?, now())", rows)


def _read_lines_sql(files: list[str]) -> str:
    # One VARCHAR column per line: a corrupt line cannot abort the scan, try() sorts it out.
    # Segments can come from other writers (a restored backup, a copy made on another OS), so
    # the reader must not trust them: strict_mode off, and DuckDB's reader ends a line at \n
    # and at \r alike, so a CRLF file reads as its lines with an empty line after each. Empty
    # lines carry no event and are dropped here (JSON never holds a raw CR inside a string, so
    # no real line is split by this).
    # The paths go through the one quoting helper: Python's repr of a list is no SQL (a path
    # holding both ' and " became a syntax error, and every segment looked unreadable).
    paths = "[" + ", ".join(sql_string(f) for f in files) + "]"
    return (
        f"select filename as source_file, line from read_csv({paths}, columns={{'line': 'VARCHAR'}}, "
        "header=false, delim=chr(1), quote='', escape='', auto_detect=false, filename=true, "
        "new_line='\\n', strict_mode=false, max_line_size=33554432, parallel=true) "
        "where line is not null and trim(line) <> ''"
    )


def _sanitise(path: Path, out_dir: Path) -> tuple[Path, list[tuple[int, str, str]]]:
    """Slow path for a file DuckDB cannot scan (bad UTF-8, stray control bytes): keep the
    good lines in a clean copy, report the bad ones with their line numbers."""
    rejects: list[tuple[int, str, str]] = []
    clean = out_dir / (path.name + ".clean")
    with path.open("rb") as src, clean.open("wb") as dst:
        for number, raw in enumerate(src, start=1):
            if not raw.strip():
                continue  # an empty line carries no event
            raw = raw.rstrip(b"\r\n") + b"\n"
            try:
                text = raw.decode("utf-8")
                orjson.loads(raw)
                if "\x01" in text:
                    raise ValueError("control byte 0x01 in line")
                dst.write(raw if raw.endswith(b"\n") else raw + b"\n")
            except (UnicodeDecodeError, orjson.JSONDecodeError, ValueError) as exc:
                rejects.append((number, f"unparseable line: {exc}", raw.decode("utf-8", "replace")[:10000]))
    return clean, rejects


def _line_numbers(path: Path, bad_lines: set[str]) -> dict[str, list[int]]:
    wanted = {line.encode("utf-8"): line for line in bad_lines}
    found: dict[str, list[int]] = {}
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            line = wanted.get(raw.rstrip(b"\r\n"))
            if line is not None:
                found.setdefault(line, []).append(number)
    return found


def _readable(con: duckdb.DuckDBPyConnection, path: str) -> str | None:
    """None if DuckDB reads every line of `path`, else its error (the lines are read, not counted:
    a count alone can skip the parse that fails)."""
    try:
        con.execute("select sum(length(line)) from (" + _read_lines_sql([path]) + ")").fetchall()
        return None
    except duckdb.Error as exc:
        return str(exc).splitlines()[0]


def _fallback_lines_source(
    con: duckdb.DuckDBPyConnection, files: list[Path], scratch_dir: Path
) -> tuple[str, list[tuple[str, int | None, str, str | None]]]:
    """The slow path, for a batch DuckDB could not scan (bad UTF-8, stray control bytes): a
    SELECT of (source_file, line) over the files, each cleaned where needed, and the rejects
    found while cleaning. A file that cannot be read even then is rejected whole (one reject
    row naming it), so one bad segment never holds back the others."""
    scratch_dir.mkdir(parents=True, exist_ok=True)
    python_rejects: list[tuple[str, int | None, str, str | None]] = []
    read_as: dict[str, str] = {}
    for f in files:
        if _readable(con, str(f)) is None:
            read_as[str(f)] = str(f)
            continue
        try:
            clean, rejects = _sanitise(f, scratch_dir)
        except OSError as exc:
            python_rejects.append((str(f), None, f"segment unreadable: {exc}", None))
            continue
        python_rejects += [(str(f), n, reason, raw) for n, reason, raw in rejects]
        error = _readable(con, str(clean))
        if error is None:
            read_as[str(clean)] = str(f)
        else:
            python_rejects.append((str(f), None, f"segment unreadable after cleaning: {error}", None))
    if not read_as:
        return "select null::varchar as source_file, null::varchar as line where false", python_rejects
    con.execute(
        "create or replace temp table _names as select unnest(?) as read_as, unnest(?) as original",
        [list(read_as), list(read_as.values())],
    )
    sql = (
        "select n.original as source_file, l.line from (" + _read_lines_sql(list(read_as)) + ") l "
        "join _names n on n.read_as = l.source_file"
    )
    return sql, python_rejects


def _named(lines_sql: str, names: dict[str, str] | None) -> str:
    """The lines with `source_file` as the manifest knows it (an object's URL for a local copy)."""
    if not names:
        return lines_sql
    return (
        "select coalesce(n.name, l.source_file) as source_file, l.line from (" + lines_sql + ") l "
        "left join _object_names n on n.local_path = l.source_file"
    )


Reject = tuple[str, int | None, str, str | None]  # (file, line number, reason, the line)


def _parse_batch(
    con: duckdb.DuckDBPyConnection, files: list[Path], scratch_dir: Path, names: dict[str, str]
) -> list[Reject]:
    """Parse `files` into the temp table `_parsed`; the rejects found while cleaning a file
    DuckDB could not scan. One parse per line and one per body: try() turns a parse error into
    NULL, which marks the line as a reject instead of failing the batch. The lines stream from
    the files."""
    if names:
        con.execute(
            "create or replace temp table _object_names as select unnest(?) as local_path, unnest(?) as name",
            [list(names), list(names.values())],
        )
    try:
        con.execute(
            PARSE_SQL.format(lines_sql=_named(_read_lines_sql([str(f) for f in files]), names), event_key=EVENT_KEY_SQL)
        )
        return []
    except duckdb.Error:
        lines_sql, python_rejects = _fallback_lines_source(con, files, scratch_dir)
        con.execute(PARSE_SQL.format(lines_sql=_named(lines_sql, names), event_key=EVENT_KEY_SQL))
        return [(names.get(f, f), line, reason, raw) for f, line, reason, raw in python_rejects]


def _located_rejects(con: duckdb.DuckDBPyConnection, local_of: dict[str, str]) -> list[Reject]:
    """The lines `_parsed` marked as rejects, each with its line number in its file (rare: the
    file is read again only when it has one)."""
    by_file: dict[str, dict[str, str]] = {}
    for source_file, line, reason in con.execute(
        "select source_file, bad_line, reject_reason from _parsed where reject_reason is not null"
    ).fetchall():
        by_file.setdefault(source_file, {})[line] = reason
    out: list[Reject] = []
    for source_file, lines in by_file.items():
        numbers = _line_numbers(Path(local_of.get(source_file, source_file)), set(lines))
        for line, reason in lines.items():
            for n in numbers.get(line, [None]):
                out.append((source_file, n, reason, line[:10000]))
    return out


def ingest_batch(
    con: duckdb.DuckDBPyConnection, files: list[Path], scratch_dir: Path, names: dict[str, str] | None = None
) -> IngestResult:
    """Ingest `files`: their rows, rejects and manifest entries commit together or not at all.
    `names` maps a local copy to the name it is recorded under (an object store URL)."""
    result = IngestResult(files=len(files), bytes=sum(f.stat().st_size for f in files))
    if not files:
        return result
    names = names or {}
    reject_rows = _parse_batch(con, files, scratch_dir, names)
    reject_rows += _located_rejects(con, {name: local for local, name in names.items()})

    erased = _erased_rows(con)
    con.execute("begin transaction")
    try:
        # Deduplicate without sorting the batch: only keys seen twice (in the batch) need a
        # window. Then one anti-join against the table drops redeliveries of ingested events:
        # DuckDB builds its hash table on the batch's side and streams the 16-byte key hashes
        # of the history once.
        con.execute("""
            create or replace temp table _dup as
            select event_key from _parsed where reject_reason is null group by 1 having count(*) > 1
        """)
        con.execute(
            """
            create or replace temp table _chosen as
            with candidates as (
                select rowid as id, event_key_md5 from _parsed
                where reject_reason is null and event_key not in (select event_key from _dup)
                union all
                select id, event_key_md5 from (
                    select rowid as id, event_key, event_key_md5, received_at, source_file from _parsed
                    where reject_reason is null and event_key in (select event_key from _dup)
                    qualify row_number() over (partition by event_key order by received_at, source_file) = 1
                ) d
            )
            select id from candidates c
            where not exists (select 1 from raw.layercode_events e where e.event_key_md5 = c.event_key_md5)
            """
            + (f" and c.id not in ({erased})" if erased else "")
        )
        con.execute("""
            insert into raw.layercode_events (event_key, received_at, agent_id, event_type, content_sha256,
                   session_id, conversation_id, turn_id, body, validation_error, writer_id, source, source_file,
                   ingested_at, event_key_md5, headers)
            select event_key, received_at, agent_id, event_type, content_sha256, session_id, conversation_id,
                   turn_id, body, validation_error, writer_id, 'webhook', source_file, now(), event_key_md5,
                   case when json_type(headers) = 'OBJECT' then headers end
            from _parsed where rowid in (select id from _chosen)
        """)
        erased_count = scalar(con, f"select count(*) from ({erased})") if erased else 0
        erased_files = (
            {
                f: set(ids)
                for f, ids in con.execute(
                    f"select source_file, list(distinct session_id) from _parsed where rowid in ({erased}) "
                    "and session_id is not null group by 1"
                ).fetchall()
            }
            if erased_count
            else {}
        )
        con.execute(
            "create or replace temp table _rej(source_file varchar, line_number bigint, reason varchar, raw_line varchar)"
        )
        if reject_rows:
            con.executemany("insert into _rej values (?, ?, ?, ?)", reject_rows)
            con.execute("insert into raw.layercode_rejects select *, now() from _rej")
        stats = con.execute(
            """
            insert into raw.layercode_ingested_files
            select f.path, f.size,
                   coalesce(good.n, 0) + coalesce(rej.n, 0),
                   coalesce(new.n, 0), coalesce(good.n, 0) - coalesce(new.n, 0), coalesce(rej.n, 0), now()
            from (select unnest(?) as path, unnest(?) as size) f
            left join (select source_file, count(*) n from _parsed where reject_reason is null group by 1) good
                   on good.source_file = f.path
            left join (select p.source_file, count(*) n from _parsed p semi join _chosen c on p.rowid = c.id
                       group by 1) new on new.source_file = f.path
            left join (select source_file, count(*) n from _rej group by 1) rej on rej.source_file = f.path
            returning rows, inserted, duplicates, rejects
        """,
            [[names.get(str(f), str(f)) for f in files], [f.stat().st_size for f in files]],
        ).fetchall()
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        raise
    finally:
        con.execute(
            "drop table if exists _names; drop table if exists _parsed; drop table if exists _dup; "
            "drop table if exists _chosen; drop table if exists _rej; drop table if exists _object_names"
        )
    result.rows = sum(r[0] for r in stats)
    result.erased = erased_count
    result.erased_files = erased_files
    result.inserted = sum(r[1] for r in stats)
    result.duplicates = sum(r[2] for r in stats)
    result.rejects = sum(r[3] for r in stats)
    return result


def tombstone_filter(alias: str) -> str:
    """SQL true when the event row `alias` (with session_id, conversation_id, body) is erased:
    lib/privacy.py's keyed_hash, in SQL, with the connection's `privacy_key` variable."""
    values = (
        ("session", f"{alias}.session_id"),
        ("conversation", f"{alias}.conversation_id"),
        ("phone", f"json_extract_string({alias}.body, '$.from_phone_number')"),
        ("phone", f"json_extract_string({alias}.body, '$.to_phone_number')"),
    )
    hashes = ", ".join(f"sha256(getvariable('privacy_key') || ':{kind}:' || {value})" for kind, value in values)
    return f"exists (select 1 from raw.erasure_tombstones t where t.key_hash in ({hashes}))"


def _erased_rows(con: duckdb.DuckDBPyConnection) -> str:
    """SQL for the parsed rows of erased sessions, conversations or phone numbers, or "" when
    nothing was ever erased. Tombstones without the key would let an erased caller back in:
    that is an error, not a silent pass."""
    if not scalar(con, "select count(*) > 0 from raw.erasure_tombstones"):
        return ""
    if scalar(con, "select getvariable('privacy_key')") is None:
        raise RuntimeError(
            "erased callers' tombstones exist but the ingest was given no privacy key "
            "(LAYERCODE_PRIVACY_KEY, or <data>/privacy/key): refusing to ingest"
        )
    return f"select p.rowid from _parsed p where p.reject_reason is null and {tombstone_filter('p')}"


def ingest_landing(
    con: duckdb.DuckDBPyConnection,
    landing_dir: Path,
    *,
    batch_bytes: int = 384 * 1024 * 1024,
    scratch_dir: Path | None = None,
    max_files: int | None = None,
    memory_limit: str | None = "1GB",
) -> IngestResult:
    """Seal orphans, then ingest every sealed segment not yet in the manifest.

    Batches of ~384 MB: smaller ones cost a commit and a pass over the key column each
    (96 MB batches took twice as long for 1M events); DuckDB's memory limit keeps the peak
    near 1 GB whatever the batch, spilling if it must."""
    with _memory_limit(con, memory_limit):
        return _ingest_landing(con, landing_dir, batch_bytes=batch_bytes, scratch_dir=scratch_dir, max_files=max_files)


@contextlib.contextmanager
def _memory_limit(con: duckdb.DuckDBPyConnection, limit: str | None) -> Iterator[None]:
    previous = scalar(con, "select current_setting('memory_limit')")
    if limit:
        con.execute(f"set memory_limit = '{limit}'")
    try:
        yield
    finally:
        con.execute(f"set memory_limit = '{previous}'")


def _ingest_landing(
    con: duckdb.DuckDBPyConnection,
    landing_dir: Path,
    *,
    batch_bytes: int,
    scratch_dir: Path | None,
    max_files: int | None,
) -> IngestResult:
    total = IngestResult()
    scan_started_ns = time.time_ns()
    dirty = dirty_partitions(con, landing_dir)
    total.partitions_listed = len(dirty)
    total.recovered_segments = len(recover_orphan_segments(landing_dir, dirty))
    files = pending_segments(con, landing_dir, dirty)
    left_for_later = files[max_files:] if max_files is not None else []
    if max_files is not None:
        files = files[:max_files]
    scratch = scratch_dir or landing_dir.parent / ".ingest-scratch"
    batch: list[Path] = []
    size = 0

    def flush() -> None:
        nonlocal batch, size
        r = ingest_batch(con, batch, scratch)
        for attr in ("files", "bytes", "rows", "inserted", "duplicates", "rejects", "erased"):
            setattr(total, attr, getattr(total, attr) + getattr(r, attr))
        for name, ids in r.erased_files.items():  # committed: no landed byte of them stays
            erase_landing_files([name], ids)
            total.erased_files.setdefault(name, set()).update(ids)
        batch, size = [], 0
        report_progress("events ingested", total.inserted)

    for f in files:
        batch.append(f)
        size += f.stat().st_size
        if size >= batch_bytes:
            flush()
    if batch:
        flush()
    unfinished = {f.parent for f in left_for_later}
    remember_clean_partitions(con, [p for p in dirty if p not in unfinished], scan_started_ns)
    if scratch.exists():
        for leftover in scratch.glob("*.clean"):
            os.unlink(leftover)
    return total


# --- landing on object storage ----------------------------------------------------------------


def listing_prefixes(con: duckdb.DuckDBPyConnection, landing: ObjectLanding, now: datetime) -> list[str] | None:
    """The hour prefixes to list: those since the last run's listing (see landing_store), or
    None on the first run, which lists the landing prefix whole once."""
    row = con.execute(
        "select listed_from from raw.layercode_listing_cursors where store_url = ?", [landing.url]
    ).fetchone()
    return None if row is None else list(recent_hour_prefixes(row[0], now))


def ingest_object_landing(
    con: duckdb.DuckDBPyConnection,
    landing: ObjectLanding,
    *,
    scratch_dir: Path,
    batch_bytes: int = 384 * 1024 * 1024,
    memory_limit: str | None = "1GB",
    download_concurrency: int = 16,
) -> IngestResult:
    """Ingest every object under the landing URL not yet in the manifest (recorded by URL),
    with the same parse, de-duplication, rejects and one-transaction commit as local files.
    Objects are downloaded to `scratch_dir` a batch at a time, and removed after their commit."""
    store = landing.store()
    run_started = datetime.now(UTC)
    prefixes = listing_prefixes(con, landing, run_started)
    objects = list_objects(store, prefixes)
    total = IngestResult(partitions_listed=len(prefixes) if prefixes is not None else 1)
    done: set[str] = set()
    if objects:
        done = {
            row[0]
            for row in con.execute(
                "select path from raw.layercode_ingested_files where path in (select unnest(?::varchar[]))",
                [[landing.object_url(m["path"]) for m in objects]],
            ).fetchall()
        }
    pending = [m for m in objects if landing.object_url(m["path"]) not in done]
    downloads = scratch_dir / "objects"
    with _memory_limit(con, memory_limit):
        start = 0
        while start < len(pending):
            batch: list[Any] = []  # obstore's ObjectMeta dicts
            size = 0
            while start < len(pending) and (not batch or size < batch_bytes):
                batch.append(pending[start])
                size += pending[start]["size"]
                start += 1
            downloads.mkdir(parents=True, exist_ok=True)
            local = asyncio.run(_download(store, batch, downloads, download_concurrency))
            try:
                r = ingest_batch(
                    con,
                    local,
                    scratch_dir,
                    names={str(path): landing.object_url(m["path"]) for path, m in zip(local, batch)},
                )
            finally:
                for path in local:
                    path.unlink(missing_ok=True)
            for attr in ("files", "bytes", "rows", "inserted", "duplicates", "rejects", "erased"):
                setattr(total, attr, getattr(total, attr) + getattr(r, attr))
            for url, ids in r.erased_files.items():  # committed: the object is written without them
                erase_landing_objects(landing, [url], ids)
                total.erased_files.setdefault(url, set()).update(ids)
    # everything listed is committed: the next run lists from this run's hour (minus the lookback)
    con.execute("insert or replace into raw.layercode_listing_cursors values (?, ?, now())", [landing.url, run_started])
    shutil.rmtree(downloads, ignore_errors=True)
    return total


async def _download(store, objects: list[dict], dest: Path, concurrency: int) -> list[Path]:
    import obstore

    sem = asyncio.Semaphore(concurrency)

    async def one(meta: dict) -> Path:
        async with sem:
            response = await obstore.get_async(store, meta["path"])
            data = await response.bytes_async()
        path = dest / meta["path"].replace("/", "__")
        path.write_bytes(bytes(data))
        return path

    return list(await asyncio.gather(*(one(m) for m in objects)))


def newest_object_ns(landing: ObjectLanding, since_ns: int) -> int:
    """The newest `last_modified` (ns) of an object under the hour prefixes since `since_ns`;
    `since_ns` if none is newer (the landing sensor's cursor). With no cursor yet: now, so the
    first tick requests one run, which ingests whatever is there."""
    if not since_ns:
        return time.time_ns()
    newest = since_ns
    since = datetime.fromtimestamp(since_ns / 1e9, UTC)
    for meta in list_objects(landing.store(), list(recent_hour_prefixes(since, datetime.now(UTC)))):
        newest = max(newest, int(meta["last_modified"].timestamp() * 1e9))
    return newest
