"""Landed lines of erased sessions, taken out of the files and objects that hold them.

A segment (or a review file) is written again without those lines, atomically and under the
same name: a reader sees the old file or the new one, never a torn one, and the ingest, which
knows a file by its name, does not take the rest in again. `forget` uses it for the files that
held an erased caller's events; the ingest uses it for a file whose events it dropped for a
tombstone (a re-delivery, a late event in a segment open during the erasure), so no landed
byte of an erased caller outlives the ingest that saw it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

import orjson

from layercode_pipeline.contract.landing import SEALED_SUFFIX
from layercode_pipeline.landing.durable import fsync_dir, write_whole


def line_session(line: bytes) -> str | None:
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


def lines_without(data: bytes, session_ids: set[str]) -> tuple[bytes, int]:
    """`data` without the lines of `session_ids`, and how many went."""
    kept, removed = [], 0
    needles = [s.encode() for s in session_ids]
    for line in data.splitlines(keepends=True):
        # the cheap test first: a line that names none of the sessions is kept as it is
        if any(n in line for n in needles) and line_session(line) in session_ids:
            removed += 1
        else:
            kept.append(line)
    return b"".join(kept), removed


def rewrite_without(path: Path, session_ids: set[str]) -> int:
    """Rewrite a landing segment (or review file) without the lines of `session_ids`,
    atomically (a new file fsynced, then renamed over the old). Returns how many lines were
    removed."""
    if not session_ids:
        return 0
    kept, removed = lines_without(path.read_bytes(), session_ids)
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


def erase_landing_files(files: Iterable[str | Path], session_ids: set[str]) -> int:
    """Each sealed local segment among `files` rewritten without the sessions' lines."""
    removed = 0
    for path in sorted({Path(f) for f in files if not str(f).startswith("s3://")}):
        if path.is_file() and path.name.endswith(SEALED_SUFFIX):
            removed += rewrite_without(path, session_ids)
    return removed


def erase_landing_objects(landing, urls: Iterable[str], session_ids: set[str]) -> int:
    """Landed objects (s3://, `landing` an ObjectLanding) that held the sessions' events,
    written again under the same name without them (a PUT replaces an object whole)."""
    import obstore

    store, root, removed = landing.store(), landing.url.rstrip("/") + "/", 0
    for url in sorted({u for u in urls if u.startswith(root)}):
        key = url.removeprefix(root)
        kept, n = lines_without(bytes(obstore.get(store, key).bytes()), session_ids)
        if n:
            obstore.put(store, key, kept)
            removed += n
    return removed
