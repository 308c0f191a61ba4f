"""Which recordings to fetch, where they go, and the rows that describe them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb

from layercode_pipeline.lib.audio import CLIPPED_SHARE, LENGTH_TOLERANCE_S, SILENT_SHARE, AudioStats, analyse_wav
from layercode_pipeline.lib.layercode_client import LayercodeAuthError, LayercodeClient
from layercode_pipeline.lib.recording_store import (
    LocalRecordingStore,
    RecordingStore,
    UnsafeIdentifier,
    recording_key,
)
from layercode_pipeline.lib.warehouse import sql_string
from layercode_pipeline.lib.wav import InvalidWav, WavInfo, inspect_wav

AUDIO_COLUMNS = ("silence_share", "longest_silence_s", "clipped_share", "loudness_dbfs", "peak_dbfs")
# what store_recordings writes of a RecordingRow (and `fetched_at`, the time it is stored)
STORED_COLUMNS = (
    "session_id",
    "agent_id",
    "status",
    "path",
    "bytes",
    "sha256",
    "sample_rate",
    "channels",
    "duration_s",
    "encoding",
    "error",
    *AUDIO_COLUMNS,
)

# The recordings measured in this run that look wrong: (description, condition on `r`, the
# raw row, and `reported_s`, Layercode's session.update `recording_duration`).
AUDIO_CHECKS = {
    "recordings_not_silent": (
        f"No recording measured in this run is silent: at least {SILENT_SHARE:.0%} of its 20 ms windows under "
        "-50 dBFS (a dead line, a muted microphone, a recorder that captured nothing).",
        f"r.silence_share >= {SILENT_SHARE}",
    ),
    "recordings_not_clipped": (
        f"No recording measured in this run is clipped: more than {CLIPPED_SHARE:.1%} of its samples at full "
        "scale (gain set too high: transcription and review suffer).",
        f"r.clipped_share > {CLIPPED_SHARE}",
    ),
    "recording_length_matches_call": (
        f"Every recording measured in this run is as long as Layercode said (session.update `recording_duration`), "
        f"within {LENGTH_TOLERANCE_S:g} s: a shorter file lost part of the call.",
        f"abs(r.duration_s - reported_s) > {LENGTH_TOLERANCE_S}",
    ),
}

AUDIO_FAILURES_SQL = """
with r as (
    select * from raw.layercode_recordings
    where status = 'downloaded' and silence_share is not null and session_id in (select unnest($ids::varchar[]))
), reported as (
    select session_id, max(try_cast(body->>'$.recording_duration' as double)) as reported_s
    from raw.layercode_events
    where event_type = 'session.update' and session_id in (select session_id from r)
    group by 1
)
select {name}, r.session_id, r.duration_s, reported.reported_s, r.silence_share, r.clipped_share, r.loudness_dbfs
from r left join reported using (session_id)
"""

# A recording is wanted when a session.update or the latest REST record says completed,
# and we do not hold a verified copy yet. `failed` (webhook) is recorded, not fetched.
CANDIDATES_SQL = """
with updates as (
    select agent_id, session_id,
           arg_max(body->>'$.recording_status', received_at) as webhook_status,
           arg_max(body->>'$.error_message', received_at) as webhook_error
    from raw.layercode_events
    where event_type = 'session.update' and validation_error is null
      and body->>'$.recording_status' in ('completed', 'failed')
    group by all
), rest as (
    select agent_id, session_id, record->>'$.recording_status' as rest_status
    from raw.layercode_session_details where http_status = 200
    qualify row_number() over (partition by agent_id, session_id order by fetched_at desc) = 1
), started as (  -- the session's own start (session.end or REST record), else when we first heard of it
    select agent_id, session_id, coalesce(min(started_at), min(received_at)) as started_at
    from (
        select agent_id, session_id, try_cast(body->>'$.started_at' as timestamptz) as started_at, received_at
        from raw.layercode_events where session_id is not null and validation_error is null
        union all
        select agent_id, session_id, try_cast(record->>'$.started_at' as timestamptz), null
        from raw.layercode_session_details where http_status = 200
    )
    group by all
), wanted as (
    select coalesce(u.agent_id, r.agent_id) as agent_id, coalesce(u.session_id, r.session_id) as session_id,
           case when 'completed' in (u.webhook_status, r.rest_status) then 'completed' else 'failed' end as state,
           u.webhook_error
    from updates u full outer join rest r using (agent_id, session_id)
    where 'completed' in (u.webhook_status, r.rest_status) or u.webhook_status = 'failed'
)
select w.agent_id, w.session_id, w.state, w.webhook_error,
       strftime(coalesce(s.started_at, now()) at time zone 'UTC', '%Y-%m-%d') as dt,
       rec.status as have_status, rec.path as have_path, rec.bytes as have_bytes,
       rec.silence_share is not null as measured
from wanted w
left join started s using (agent_id, session_id)
left join raw.layercode_recordings rec using (agent_id, session_id)
order by 1, 2
"""


@dataclass
class RecordingRow:
    session_id: str
    agent_id: str
    status: str  # downloaded / not_ready / failed / error
    path: str | None = None  # the kept file's uri: a local path, or s3://bucket/prefix/key
    bytes: int | None = None
    sha256: str | None = None
    sample_rate: int | None = None
    channels: int | None = None
    duration_s: float | None = None
    error: str | None = None
    encoding: str | None = None  # pcm / mulaw / alaw, from the WAV header
    audio: AudioStats | None = None  # None until the samples were measured


@dataclass
class PlannedDownload:
    agent_id: str
    session_id: str
    key: str  # where it is kept in the store
    replace: bool = False  # a kept copy was found broken: this one replaces it


@dataclass
class RecordingPlan:
    downloads: list[PlannedDownload]  # to fetch
    rows: list[RecordingRow]  # to record without downloading
    held: int  # kept and verified: never fetched again
    broken: list[dict[str, str]]  # kept once, but gone or damaged in the store: fetched again
    unmeasured: list[tuple[str, str, str]]  # (agent_id, session_id, uri) kept before audio checks existed


def recording_candidates(con: duckdb.DuckDBPyConnection, scratch: Path) -> Path:
    """The warehouse's side of the plan, written to the Parquet file `scratch` (under the writers'
    lock; `read_candidates` reads it once the lock is let go). At a million sessions the query
    takes 4 s and turning its rows into Python objects 8 s more: the file keeps those 8 s out of
    the lock every other writer (the ingest, dbt) waits for."""
    scratch.parent.mkdir(parents=True, exist_ok=True)
    con.execute(f"copy ({CANDIDATES_SQL}) to {sql_string(str(scratch))} (format parquet)")
    return scratch


def read_candidates(scratch: Path) -> list[tuple]:
    """The rows `recording_candidates` wrote (ordered by agent and session), the file removed."""
    try:
        with duckdb.connect() as con:
            return con.execute(f"select * from read_parquet({sql_string(str(scratch))}) order by 1, 2").fetchall()
    finally:
        scratch.unlink(missing_ok=True)


def plan_recordings(candidates: list[tuple], store: RecordingStore, measure_limit: int = 200) -> RecordingPlan:
    """Every completed recording is a candidate, so every kept file is verified here (its size
    in the store, and for local files the header); a broken one is planned for download again.
    Kept files whose audio was never measured are listed (`measure_limit` a run) to be measured."""
    plan = RecordingPlan([], [], 0, [], [])
    kept = [(row[6], row[7]) for row in candidates if row[5] == "downloaded" and row[6]]
    problems = store.problems(kept)
    for agent_id, session_id, state, webhook_error, dt, have_status, have_path, _bytes, measured in candidates:
        replace = False
        if have_status == "downloaded" and have_path:
            problem = problems.get(have_path)
            if problem is None:
                plan.held += 1  # the verified copy (sha256 recorded at download) is there
                if not measured and len(plan.unmeasured) < measure_limit:
                    plan.unmeasured.append((agent_id, session_id, have_path))
                continue
            plan.broken.append({"session_id": session_id, "path": have_path, "problem": problem})
            replace = True
        if state == "failed":
            if have_status != "failed":
                plan.rows.append(
                    RecordingRow(session_id, agent_id, "failed", error=webhook_error or "recording failed")
                )
            continue
        try:
            key = recording_key(agent_id, session_id, dt)
        except UnsafeIdentifier as exc:
            if have_status != "error":
                plan.rows.append(RecordingRow(session_id, agent_id, "error", error=str(exc)))
            continue
        plan.downloads.append(PlannedDownload(agent_id, session_id, key, replace))
    return plan


def _kept_row(agent_id: str, session_id: str, uri: str, d_bytes: int, sha256: str | None, wav, audio) -> RecordingRow:
    return RecordingRow(
        session_id,
        agent_id,
        "downloaded",
        uri,
        d_bytes,
        sha256,
        wav.sample_rate,
        wav.channels,
        round(wav.duration_s, 3),
        encoding=wav.encoding,
        audio=audio,
    )


def _measure(path: Path, wav: WavInfo) -> tuple[AudioStats | None, str | None]:
    """The audio checks' figures, or why they could not be computed (the file is kept anyway:
    its header is valid, and a recording nobody can measure is still worth listening to)."""
    try:
        return analyse_wav(path, wav), None
    except Exception as exc:  # noqa: BLE001 - one file's decoding problem, recorded on its row
        return None, f"audio not measured: {type(exc).__name__}: {exc}"


async def download_recordings(
    client: LayercodeClient,
    store: RecordingStore,
    downloads: list[PlannedDownload],
    *,
    max_bytes: int | None = None,
    deadline_s: float | None = None,
    on_done: Callable[[RecordingRow], None] | None = None,
) -> list[RecordingRow]:
    """Download each to a temporary file, verify and measure it there, keep it in the store,
    and remove the temporary file whatever happened. One recording's failure is its row's
    error; the others go on."""

    async def one(planned: PlannedDownload) -> RecordingRow:
        agent_id, session_id = planned.agent_id, planned.session_id
        tmp = store.temp_path(planned.key)
        try:
            d = await client.download_recording(agent_id, session_id, tmp, max_bytes=max_bytes, deadline_s=deadline_s)
            if d.status == "downloaded":
                assert d.wav is not None
                audio, problem = await asyncio.to_thread(_measure, tmp, d.wav)
                uri = await asyncio.to_thread(store.put, tmp, planned.key, replace=planned.replace)
                row = _kept_row(agent_id, session_id, uri, d.bytes, d.sha256, d.wav, audio)
                row.error = problem
            elif d.status == "not_ready":
                row = RecordingRow(session_id, agent_id, "not_ready", error=d.detail)
            else:
                row = RecordingRow(session_id, agent_id, "error", error=d.detail)
        except LayercodeAuthError:
            raise
        except Exception as exc:  # noqa: BLE001 - isolated per session, retried next run
            row = RecordingRow(session_id, agent_id, "error", error=f"{type(exc).__name__}: {exc}")
        finally:
            tmp.unlink(missing_ok=True)
        if on_done is not None:
            on_done(row)
        return row

    return list(await asyncio.gather(*(one(d) for d in downloads)))


def measure_kept(store: RecordingStore, unmeasured: list[tuple[str, str, str]]) -> list[tuple[str, str, AudioStats]]:
    """Measure recordings kept before the audio checks existed: each fetched to a temporary
    file (a local store's file is read where it is), measured, and the copy removed."""
    measured = []
    for agent_id, session_id, uri in unmeasured:
        local = isinstance(store, LocalRecordingStore)
        path = Path(uri) if local else store.temp_path(f"measure-{session_id}")
        try:
            if not local:
                store.fetch(uri, path)
            audio, _problem = _measure(path, inspect_wav(path))
            if audio is not None:
                measured.append((agent_id, session_id, audio))
        except (OSError, InvalidWav, ValueError):
            continue  # verified again next run; a broken file is fetched again from Layercode
        finally:
            if not local:
                path.unlink(missing_ok=True)
    return measured


def store_recordings(con: duckdb.DuckDBPyConnection, rows: list[RecordingRow]) -> None:
    """One current row per session: the latest outcome replaces the previous one."""
    if not rows:
        return
    con.execute("begin transaction")
    try:
        con.execute("create or replace temp table _rec as select * from raw.layercode_recordings limit 0")
        # by column name: a warehouse migrated in place has its added columns last. One statement
        # of column lists (not a statement per row): the first run over a long history stores
        # hundreds of thousands of rows, and held the warehouse for minutes row by row
        values = [
            (
                r.session_id,
                r.agent_id,
                r.status,
                r.path,
                r.bytes,
                r.sha256,
                r.sample_rate,
                r.channels,
                r.duration_s,
                r.encoding,
                r.error,
                *_audio_values(r.audio),
            )
            for r in rows
        ]
        con.execute(
            f"insert into _rec ({', '.join(STORED_COLUMNS)}, fetched_at) "
            f"select {', '.join('unnest(?)' for _ in STORED_COLUMNS)}, now()",
            [list(column) for column in zip(*values, strict=True)],
        )
        con.execute(
            "delete from raw.layercode_recordings r using _rec t "
            "where r.agent_id = t.agent_id and r.session_id = t.session_id"
        )
        con.execute("insert into raw.layercode_recordings by name select * from _rec")
        con.execute("drop table _rec")
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        raise


def _audio_values(audio: AudioStats | None) -> tuple[float | None, ...]:
    return tuple(getattr(audio, c) if audio is not None else None for c in AUDIO_COLUMNS)


def store_measurements(con: duckdb.DuckDBPyConnection, measured: list[tuple[str, str, AudioStats]]) -> None:
    """The audio figures of recordings kept before they were measured. `fetched_at` moves, so
    the marts rebuild those sessions."""
    if not measured:
        return
    con.executemany(
        f"update raw.layercode_recordings set {', '.join(f'{c} = ?' for c in AUDIO_COLUMNS)}, fetched_at = now() "
        "where agent_id = ? and session_id = ?",
        [(*_audio_values(audio), agent_id, session_id) for agent_id, session_id, audio in measured],
    )


def audio_check_failures(con: duckdb.DuckDBPyConnection, session_ids: list[str]) -> dict[str, list[dict]]:
    """For each audio check, the recordings among `session_ids` that fail it, with their figures."""
    found: dict[str, list[dict]] = {name: [] for name in AUDIO_CHECKS}
    if not session_ids:
        return found
    flags = ", ".join(f"coalesce({condition}, false) as {name}" for name, (_text, condition) in AUDIO_CHECKS.items())
    cur = con.execute(AUDIO_FAILURES_SQL.format(name=flags), {"ids": session_ids})
    columns = [d[0] for d in cur.description]
    for values in cur.fetchall():
        row = dict(zip(columns, values, strict=True))
        figures = {
            k: row[k]
            for k in ("session_id", "duration_s", "reported_s", "silence_share", "clipped_share", "loudness_dbfs")
        }
        for name in AUDIO_CHECKS:
            if row[name]:
                found[name].append(figures)
    return found
