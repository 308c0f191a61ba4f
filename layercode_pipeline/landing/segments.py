"""Landed segments on the local disk: listing partitions and sealed segments, and recovering
the segments of a writer that died.

A writer that died (SIGKILL, power loss) leaves an `.open` file nobody holds a lock on:
`recover_orphan_segments` trims any torn last line (never acknowledged, since acknowledgement
waits for the fsync of whole lines) and seals it.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from layercode_pipeline.contract.landing import OPEN_SUFFIX, SEALED_SUFFIX, seal_path
from layercode_pipeline.landing.durable import fsync_dir


def partition_dirs(landing_dir: Path) -> list[Path]:
    """Every `dt=*/hour=*` directory, in date and hour order."""
    if not landing_dir.exists():
        return []
    return [
        hour_dir
        for dt_dir in sorted(p for p in landing_dir.iterdir() if p.name.startswith("dt="))
        for hour_dir in sorted(p for p in dt_dir.iterdir() if p.name.startswith("hour="))
    ]


def partition_mtimes(landing_dir: Path) -> Iterator[tuple[Path, int]]:
    """(directory, mtime_ns) of every partition. Creating, sealing (a rename) or removing a
    segment changes its partition's mtime, so an unchanged mtime means unchanged contents."""
    for hour_dir in partition_dirs(landing_dir):
        try:
            yield hour_dir, hour_dir.stat().st_mtime_ns
        except FileNotFoundError:
            continue


def iter_sealed_segments(landing_dir: Path, partitions: Iterable[Path] | None = None) -> Iterator[Path]:
    """Sealed segments in path order (date, hour, writer, sequence), of every partition or
    of the given ones."""
    for hour_dir in partition_dirs(landing_dir) if partitions is None else partitions:
        try:
            entries = sorted(os.scandir(hour_dir), key=lambda e: e.name)
        except FileNotFoundError:
            continue
        for entry in entries:
            if entry.name.endswith(SEALED_SUFFIX) and entry.is_file():
                yield Path(entry.path)


@dataclass
class RecoveredSegment:
    path: Path
    trimmed_bytes: int


def recover_orphan_segments(landing_dir: Path, partitions: Iterable[Path] | None = None) -> list[RecoveredSegment]:
    """Seal `.open` segments whose writer is gone (no one holds their lock), in every
    partition or in the given ones."""
    recovered: list[RecoveredSegment] = []
    for open_path in sorted(
        p
        for hour_dir in (partition_dirs(landing_dir) if partitions is None else partitions)
        for p in hour_dir.glob(f"*{OPEN_SUFFIX}")
    ):
        try:
            fd = os.open(open_path, os.O_RDWR)
        except FileNotFoundError:  # sealed by its writer meanwhile
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live writer owns it
            if not open_path.exists():
                continue
            size = os.fstat(fd).st_size
            keep = _last_newline_end(fd, size)
            if keep < size:
                os.ftruncate(fd, keep)
            os.fsync(fd)
            if keep == 0:
                os.unlink(open_path)
            else:
                os.rename(open_path, seal_path(open_path))
                recovered.append(RecoveredSegment(seal_path(open_path), size - keep))
            fsync_dir(open_path.parent)
        finally:
            os.close(fd)
    return recovered


def _last_newline_end(fd: int, size: int) -> int:
    """Offset just past the last b'\\n' in the file (0 if none)."""
    block = 64 * 1024
    end = size
    while end > 0:
        start = max(0, end - block)
        chunk = os.pread(fd, end - start, start)
        idx = chunk.rfind(b"\n")
        if idx >= 0:
            return start + idx + 1
        end = start
    return 0
