"""Retention: old recordings, text, landing files and reviews expire on schedule.

Each class has its own setting (days; unset: kept), applied by the daily `retention_job`:

- **recordings** (LAYERCODE_RETENTION_RECORDINGS_DAYS): the WAV files of calls older than that
  are deleted from the recordings store; their rows say `expired` and keep every figure
  (length, format, audio checks).
- **text** (LAYERCODE_RETENTION_TEXT_DAYS): what was said and what was written about it:
  transcript text in the raw webhooks and REST records, `data` payloads, the enrichment's
  summary, caller name, rationale, action items and custom fields, the marts' copies of them
  (`fct_turns.text`, `fct_sessions.summary`, ...), and the result messages and express
  answers of that age (outbox and cache files, vacuumed). The numbers stay: durations, counts,
  words, latencies, outcome, sentiment, scores, and every aggregate.
- **landing** (LAYERCODE_RETENTION_LANDING_DAYS): sealed landing segments of older days, once
  ingested. Keep it at or under the text retention: the landing holds the webhooks as sent.
- **reviews** (LAYERCODE_RETENTION_REVIEWS_DAYS): reviews older than that, in the review files
  and in raw.reviews.

A call's age is its **call time**: when it started (`started_at` in its webhooks or its REST
record), else when it was first heard of (its first webhook's arrival, or its REST record's
fetch): a call known only from its REST record expires too, and so does one backfilled late
with an old start. Each class commits on its own (a failure in one leaves the others done, and
a recording's file is deleted before its row says `expired`, so a stop in between only leaves
it to expire again). Sessions whose text expired are remembered (`raw.retention_expired`), so
each is emptied once. The serving copy is then published whole: no old file keeps what expired.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import orjson

from layercode_pipeline.contract.landing import SEALED_SUFFIX

# JSON keys whose values are what someone said or wrote (any depth): emptied when text expires
TEXT_KEYS = frozenset({"text", "text_heard", "user_message", "assistant_message", "data"})
# the marts' text columns, emptied with the raw text (table -> columns)
MART_TEXT = {
    "marts.fct_turns": ("text", "text_heard"),
    "marts.fct_sessions": ("summary", "caller_name", "quality_rationale", "action_items", "custom_fields"),
    "marts.fct_conversations": ("caller_name",),
    "enrichment.session_enrichments": ("summary", "caller_name", "quality_rationale", "action_items", "custom_fields"),
}


@dataclass(frozen=True)
class RetentionPolicy:
    recordings_days: int | None = None
    text_days: int | None = None
    landing_days: int | None = None
    reviews_days: int | None = None


def strip_text(value: Any) -> Any:
    """`value` with every TEXT_KEYS entry emptied (null), at any depth."""
    if isinstance(value, dict):
        return {k: (None if k in TEXT_KEYS else strip_text(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [strip_text(v) for v in value]
    return value


# each session's call time: its earliest started_at, else when it was first heard of
CALL_TIMES_SQL = """
with heard as (
    select session_id,
           min(try_cast(json_extract_string(body, '$.started_at') as timestamptz))
               filter (where event_type in ('session.start', 'session.end')) as started_at,
           min(received_at) as first_at
    from raw.layercode_events where session_id is not null group by 1
    union all
    select session_id, min(try_cast(record->>'$.started_at' as timestamptz)), min(fetched_at)
    from raw.layercode_session_details where session_id is not null group by 1
)
select session_id, coalesce(min(started_at), min(first_at)) as call_at from heard group by 1
"""


def _call_times(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(f"create or replace temp table _call_times as {CALL_TIMES_SQL}")


def _expired_sessions(con: duckdb.DuckDBPyConnection, cutoff: datetime, kind: str) -> list[str]:
    """Sessions whose call time is before `cutoff` and whose `kind` has not expired yet."""
    return [
        r[0]
        for r in con.execute(
            """select c.session_id from _call_times c where c.call_at < ?
               and not exists (select 1 from raw.retention_expired x where x.session_id = c.session_id and x.class = ?)
               order by 1""",
            [cutoff, kind],
        ).fetchall()
    ]


def _has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    schema, table = name.split(".")
    return bool(
        con.execute(
            "select count(*) from duckdb_tables() where schema_name = ? and table_name = ? "
            "and database_name = current_database()",
            [schema, table],
        ).fetchone()[0]  # type: ignore[index]
    )


def expire_text(con: duckdb.DuckDBPyConnection, cutoff: datetime, *, dry_run: bool = False) -> int:
    """Empty the text of sessions whose call time is before `cutoff` (each once)."""
    sessions = _expired_sessions(con, cutoff, "text")
    if dry_run or not sessions:
        return len(sessions)
    rows = con.execute(
        "select event_key_md5, body from raw.layercode_events where session_id in (select unnest(?::varchar[]))",
        [sessions],
    ).fetchall()
    con.execute("create or replace temp table _stripped (k uhugeint, body varchar)")
    if rows:
        stripped = [(k, orjson.dumps(strip_text(orjson.loads(b))).decode()) for k, b in rows]
        con.executemany("insert into _stripped values (?, ?)", stripped)
        con.execute("update raw.layercode_events e set body = s.body from _stripped s where e.event_key_md5 = s.k")
    records = con.execute(
        "select rowid, record from raw.layercode_session_details "
        "where session_id in (select unnest(?::varchar[])) and record is not null",
        [sessions],
    ).fetchall()
    con.execute("create or replace temp table _records (r bigint, record varchar)")
    if records:  # (a call with no REST record has none to empty)
        con.executemany(
            "insert into _records values (?, ?)",
            [(r, orjson.dumps(strip_text(orjson.loads(rec))).decode()) for r, rec in records],
        )
        con.execute(
            "update raw.layercode_session_details d set record = s.record::json from _records s where d.rowid = s.r"
        )
    for table, columns in MART_TEXT.items():
        if not _has_table(con, table):
            continue
        have = {c[0] for c in con.execute(f"select * from {table} limit 0").description}
        sets = ", ".join(f"{c} = null" for c in columns if c in have)
        if not sets:
            continue
        key = "conversation_id" if table == "marts.fct_conversations" else "session_id"
        ids = sessions if key == "session_id" else _conversations(con, sessions)
        con.execute(f"update {table} set {sets} where {key} in (select unnest(?::varchar[]))", [ids])
    con.execute("drop table _stripped; drop table _records")
    con.execute("insert or ignore into raw.retention_expired select unnest(?::varchar[]), 'text', now()", [sessions])
    return len(sessions)


def _conversations(con: duckdb.DuckDBPyConnection, sessions: list[str]) -> list[str]:
    return [
        r[0]
        for r in con.execute(
            "select distinct conversation_id from raw.layercode_events "
            "where session_id in (select unnest(?::varchar[])) and conversation_id is not null",
            [sessions],
        ).fetchall()
    ]


def expire_recordings(con: duckdb.DuckDBPyConnection, store, cutoff: datetime, *, dry_run: bool = False) -> int:
    """Delete the WAV files of calls whose call time is before `cutoff`; their rows say `expired`."""
    rows = con.execute(
        """select r.session_id, r.path from raw.layercode_recordings r join _call_times c using (session_id)
           where r.status = 'downloaded' and r.path is not null and c.call_at < ?""",
        [cutoff],
    ).fetchall()
    if dry_run or not rows:
        return len(rows)
    for _session, uri in rows:
        store.delete(uri)  # first the file: a stop before the row only leaves it to expire again
    ids = [r[0] for r in rows]
    # fetched_at stays: a rebuild of these sessions' marts is not needed (and would recount
    # their words from text that may have expired too); the marts' copies are updated here
    con.execute(
        "update raw.layercode_recordings set status = 'expired', path = null, "
        "error = 'expired by LAYERCODE_RETENTION_RECORDINGS_DAYS' where session_id in (select unnest(?::varchar[]))",
        [ids],
    )
    for table, sets in (
        ("marts.fct_recordings", "download_status = 'expired', recording_uri = null"),
        ("marts.fct_sessions", "recording_download_status = 'expired', recording_path = null"),
    ):
        if _has_table(con, table):
            con.execute(f"update {table} set {sets} where session_id in (select unnest(?::varchar[]))", [ids])
    return len(rows)


def expire_reviews(
    con: duckdb.DuckDBPyConnection, reviews_dir: Path, cutoff: datetime, *, dry_run: bool = False
) -> int:
    """Reviews saved before `cutoff`: the day files wholly before it, and their rows."""
    removed = 0
    for path in sorted(reviews_dir.glob("reviews-*.jsonl")) if reviews_dir.is_dir() else []:
        day = datetime.strptime(path.stem.removeprefix("reviews-"), "%Y-%m-%d").replace(tzinfo=UTC)
        if day + timedelta(days=1) <= cutoff:
            removed += 1
            if not dry_run:
                path.unlink()
                con.execute("delete from raw.review_files where source_file = ?", [path.name])
    if not dry_run:
        con.execute("delete from raw.reviews where reviewed_at < ?", [cutoff])
    return removed


def expire_landing(con: duckdb.DuckDBPyConnection, landing: Path, cutoff: datetime, *, dry_run: bool = False) -> int:
    """Sealed, ingested landing segments of days wholly before `cutoff`."""
    removed = 0
    if not landing.is_dir():
        return 0
    for day_dir in sorted(landing.glob("dt=*")):
        day = datetime.strptime(day_dir.name.removeprefix("dt="), "%Y-%m-%d").replace(tzinfo=UTC)
        if day + timedelta(days=1) > cutoff:
            continue
        segments = [p for p in day_dir.rglob(f"*{SEALED_SUFFIX}") if p.is_file()]
        ingested = {
            r[0]
            for r in con.execute(
                "select path from raw.layercode_ingested_files where path in (select unnest(?::varchar[]))",
                [[str(p) for p in segments]],
            ).fetchall()
        }
        for p in segments:
            if str(p) in ingested:  # never one not yet ingested: that would lose data
                removed += 1
                if not dry_run:
                    p.unlink()
        if dry_run:
            continue
        for hour_dir in sorted(day_dir.glob("hour=*")):
            if not any(hour_dir.iterdir()):
                hour_dir.rmdir()
                con.execute("delete from raw.layercode_clean_partitions where partition = ?", [str(hour_dir)])
        if not any(day_dir.iterdir()):
            day_dir.rmdir()
    return removed


def check_policy(policy: RetentionPolicy) -> None:
    """The landing holds the webhooks as sent: kept longer than the text, it would keep the
    text. Raises ValueError naming the settings."""
    if policy.text_days is not None and (policy.landing_days is None or policy.landing_days > policy.text_days):
        raise ValueError(
            f"LAYERCODE_RETENTION_LANDING_DAYS ({policy.landing_days or 'unset: kept forever'}) must be set at or under "
            f"LAYERCODE_RETENTION_TEXT_DAYS ({policy.text_days}): the landing holds the webhooks as sent, text included"
        )


def apply_retention(
    *,
    warehouse,  # lib.warehouse.Warehouse
    paths,  # config.DataPaths
    recordings,  # lib.recording_store.RecordingStore
    policy: RetentionPolicy,
    outbox_path: Path | None = None,
    now: datetime | None = None,
    dry_run: bool = False,
) -> dict[str, int]:
    """Apply every class's retention as of `now`; what expired per class (with `dry_run`, what
    would, and nothing is changed)."""
    from layercode_pipeline.lib.privacy import erase_from_sqlite
    from layercode_pipeline.lib.serving_copy import STATE_FILE, publish_serving_copy

    check_policy(policy)
    now = now or datetime.now(UTC)
    done: dict[str, int] = {}
    classes = (
        (
            "recordings",
            policy.recordings_days,
            lambda con, cutoff: expire_recordings(con, recordings, cutoff, dry_run=dry_run),
        ),
        ("text_sessions", policy.text_days, lambda con, cutoff: expire_text(con, cutoff, dry_run=dry_run)),
        (
            "review_files",
            policy.reviews_days,
            lambda con, cutoff: expire_reviews(con, paths.reviews, cutoff, dry_run=dry_run),
        ),
        (
            "landing_segments",
            policy.landing_days,
            lambda con, cutoff: expire_landing(con, paths.landing, cutoff, dry_run=dry_run),
        ),
    )
    with warehouse.open_for_writing() as con:
        _call_times(con)
        for name, days, expire in classes:
            if days is None:
                continue
            con.execute("begin transaction")  # each class on its own: one failing leaves the others done
            try:
                done[name] = expire(con, now - timedelta(days=days))
                con.execute("commit")
            except BaseException:
                con.execute("rollback")
                raise
        con.execute("drop table _call_times")
        if not dry_run:
            con.execute("checkpoint")
    if policy.text_days is not None:  # result messages carry summaries; the express cache, answers
        cutoff = (now - timedelta(days=policy.text_days)).timestamp()
        if dry_run:
            return done
        if outbox_path is not None:
            done["result_messages"] = erase_from_sqlite(
                outbox_path,
                [
                    (
                        "delete from deliveries where message_id in (select id from messages where created_at < ?)",
                        [cutoff],
                    ),
                    ("delete from messages where created_at < ? and type <> 'call.erased'", [cutoff]),
                ],
            )
        done["express_answers"] = erase_from_sqlite(
            paths.data_dir / "enrichment" / "express_answers.sqlite3",
            [("delete from answers where created_at < ?", [cutoff])],
        )
        if done.get("text_sessions"):  # the emptied text's bytes stay in the file's free blocks
            warehouse.rewrite_file()
    if not dry_run and any(done.values()) and (paths.serving / "analytics.duckdb").exists():
        (paths.serving / STATE_FILE).unlink(missing_ok=True)  # a whole new copy: no old file keeps the text
        publish_serving_copy(warehouse, paths.serving)
    return done
