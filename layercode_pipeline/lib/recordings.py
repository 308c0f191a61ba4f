"""Which recordings to fetch, where they go, and the rows that describe them."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb

from layercode_pipeline.lib.layercode_client import LayercodeAuthError, LayercodeClient
from layercode_pipeline.lib.wav import InvalidWav, inspect_wav

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")

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
       rec.status as have_status, rec.path as have_path, rec.bytes as have_bytes
from wanted w
left join started s using (agent_id, session_id)
left join raw.layercode_recordings rec using (agent_id, session_id)
order by 1, 2
"""


class UnsafeIdentifier(ValueError):
    pass


def recording_path(root: Path, agent_id: str, session_id: str, dt: str) -> Path:
    """`<root>/agent=<id>/dt=<date>/<session_id>.wav`, refusing ids that could leave `root`."""
    for label, value in (("agent_id", agent_id), ("session_id", session_id)):
        if not SAFE_ID.match(value) or ".." in value:
            raise UnsafeIdentifier(f"{label} {value!r} is not safe in a file name")
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", dt):
        raise UnsafeIdentifier(f"date {dt!r} is not YYYY-MM-DD")
    root = root.resolve()
    path = (root / f"agent={agent_id}" / f"dt={dt}" / f"{session_id}.wav").resolve()
    if root not in path.parents:
        raise UnsafeIdentifier(f"{path} escapes {root}")
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class RecordingRow:
    session_id: str
    agent_id: str
    status: str  # downloaded / not_ready / failed / error
    path: str | None = None
    bytes: int | None = None
    sha256: str | None = None
    sample_rate: int | None = None
    channels: int | None = None
    duration_s: float | None = None
    error: str | None = None
    encoding: str | None = None  # pcm / mulaw / alaw, from the WAV header


def kept_file_problem(path: Path, size: int | None) -> str | None:
    """What is wrong with a kept recording on disk (gone, resized, no valid WAV header), or None.
    Reads the header only."""
    try:
        if not path.is_file():
            return "the file is missing"
        info = inspect_wav(path)
    except (InvalidWav, OSError) as exc:
        return str(exc)
    return None if info.file_bytes == size else f"{info.file_bytes} bytes on disk, {size} when kept"


@dataclass
class RecordingPlan:
    downloads: list[tuple[str, str, Path]]  # (agent_id, session_id, destination) to fetch
    rows: list[RecordingRow]  # to record without downloading
    held: int  # kept and verified: never fetched again
    broken: list[dict[str, str]]  # kept once, but gone or damaged on disk: fetched again


def plan_recordings(con: duckdb.DuckDBPyConnection, root: Path) -> RecordingPlan:
    """Every completed recording is a candidate, so every kept file is verified here (header
    only); a broken one is planned for download again."""
    plan = RecordingPlan([], [], 0, [])
    downloads, rows = plan.downloads, plan.rows
    for agent_id, session_id, state, webhook_error, dt, have_status, have_path, have_bytes in con.execute(
        CANDIDATES_SQL
    ).fetchall():
        if have_status == "downloaded" and have_path:
            problem = kept_file_problem(Path(have_path), have_bytes)
            if problem is None:
                plan.held += 1  # the verified copy (sha256 recorded at download) is there
                continue
            plan.broken.append({"session_id": session_id, "path": have_path, "problem": problem})
        if state == "failed":
            if have_status != "failed":
                rows.append(RecordingRow(session_id, agent_id, "failed", error=webhook_error or "recording failed"))
            continue
        try:
            path = recording_path(root, agent_id, session_id, dt)
        except UnsafeIdentifier as exc:
            if have_status != "error":
                rows.append(RecordingRow(session_id, agent_id, "error", error=str(exc)))
            continue
        if path.exists():  # e.g. a run killed after the rename but before its row: verify, keep
            try:
                info = inspect_wav(path)
                rows.append(
                    RecordingRow(
                        session_id,
                        agent_id,
                        "downloaded",
                        str(path),
                        info.file_bytes,
                        sha256_file(path),
                        info.sample_rate,
                        info.channels,
                        round(info.duration_s, 3),
                        encoding=info.encoding,
                    )
                )
                continue
            except InvalidWav:
                path.unlink()
        downloads.append((agent_id, session_id, path))
    return plan


async def download_recordings(
    client: LayercodeClient,
    downloads: list[tuple[str, str, Path]],
    on_done: Callable[[RecordingRow], None] | None = None,
) -> list[RecordingRow]:
    async def one(agent_id: str, session_id: str, path: Path) -> RecordingRow:
        try:
            d = await client.download_recording(agent_id, session_id, path)
            if d.status == "downloaded":
                assert d.wav is not None
                row = RecordingRow(
                    session_id,
                    agent_id,
                    "downloaded",
                    str(d.path),
                    d.bytes,
                    d.sha256,
                    d.wav.sample_rate,
                    d.wav.channels,
                    round(d.wav.duration_s, 3),
                    encoding=d.wav.encoding,
                )
            elif d.status == "not_ready":
                row = RecordingRow(session_id, agent_id, "not_ready", error=d.detail)
            else:
                row = RecordingRow(session_id, agent_id, "error", error=d.detail)
        except LayercodeAuthError:
            raise
        except Exception as exc:  # noqa: BLE001 - isolated per session, retried next run
            row = RecordingRow(session_id, agent_id, "error", error=f"{type(exc).__name__}: {exc}")
        if on_done is not None:
            on_done(row)
        return row

    return list(await asyncio.gather(*(one(*d) for d in downloads)))


def store_recordings(con: duckdb.DuckDBPyConnection, rows: list[RecordingRow]) -> None:
    """One current row per session: the latest outcome replaces the previous one."""
    if not rows:
        return
    con.execute("begin transaction")
    try:
        con.execute("create or replace temp table _rec as select * from raw.layercode_recordings limit 0")
        # by column name: a warehouse migrated in place has its added columns last
        con.executemany(
            "insert into _rec (session_id, agent_id, status, path, bytes, sha256, sample_rate, channels, "
            "duration_s, encoding, fetched_at, error) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, now(), ?)",
            [
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
                )
                for r in rows
            ],
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
