"""Durable local file writes: whole writes, file and directory fsyncs, and the quarantine.

Shared by the listener's landing writer, the quarantine, and the serving publish: a write is
durable only when the data, and the directory entry that names it, are on disk.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import uuid
from datetime import datetime
from pathlib import Path

import orjson


def write_whole(fd: int, data: bytes) -> None:
    """Write all of `data` or raise: a short write (a disk filling up, a file size limit) is
    continued, so an error is never taken for a complete write."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.ENOSPC, "short write")
        view = view[written:]


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a created, renamed or removed file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def quarantine(quarantine_dir: Path, *, agent_id: str, reason: str, body: bytes, received_at: datetime) -> Path:
    """Keep a signed but unusable body, byte for byte, with why it was refused. Both files are
    written whole and fsynced, or neither is left behind (the caller answers 503)."""
    day = quarantine_dir / f"dt={received_at:%Y-%m-%d}"
    day.mkdir(parents=True, exist_ok=True)
    stem = f"{received_at:%H%M%S}-{uuid.uuid4().hex}"
    meta = orjson.dumps(
        {
            "received_at": received_at.isoformat(),
            "agent_id": agent_id,
            "reason": reason,
            "content_sha256": hashlib.sha256(body).hexdigest(),
            "bytes": len(body),
        }
    )
    written: list[Path] = []
    try:
        for name, data in ((f"{stem}.body", body), (f"{stem}.meta.json", meta)):
            fd = os.open(day / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            written.append(day / name)
            try:
                write_whole(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(day)
    except OSError:
        for path in written:
            with contextlib.suppress(OSError):
                path.unlink()
        raise
    return day / f"{stem}.body"
