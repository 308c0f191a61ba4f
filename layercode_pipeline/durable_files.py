"""Durable local file writes: whole writes, file and directory fsyncs.

Shared by the listener's landing writer, the quarantine, and the serving publish: a write is
durable only when the data, and the directory entry that names it, are on disk.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path


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
