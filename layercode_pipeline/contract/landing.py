"""The landing file format: the contract between the listener and the ingest.

    <landing>/dt=YYYY-MM-DD/hour=HH/<writer id>-<seq>.jsonl        sealed, read by ingest
    <landing>/dt=YYYY-MM-DD/hour=HH/<writer id>-<seq>.jsonl.open   being written

One JSON envelope per line (see `build_envelope`). A segment is written under its
`.open` name while its writer holds an exclusive `flock` on it, and sealed by an atomic
rename. A writer that died (SIGKILL, power loss) leaves an `.open` file nobody holds a
lock on: `recover_orphan_segments` trims any torn last line (never acknowledged, since
acknowledgement waits for the fsync of whole lines) and seals it.
"""

from __future__ import annotations

import fcntl
import functools
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import orjson

from layercode_pipeline.durable_files import fsync_dir

ENVELOPE_VERSION = 1
SEALED_SUFFIX = ".jsonl"
OPEN_SUFFIX = ".jsonl.open"
# Request headers worth keeping by default: the client and tracing headers, and every `x-`
# header (Layercode appends the customer's custom headers, e.g. `x-tenant-id`, to each webhook).
DEFAULT_KEPT_HEADERS = ("user-agent", "content-type", "x-*", "traceparent")
# Credentials and credential-derived values, never kept whatever the allow-list says.
NEVER_KEPT_HEADERS = frozenset(
    {
        "layercode-signature",
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "x-amz-security-token",
    }
)


# Layercode's custom headers are free-form (contract section 6) and may carry the customer's own
# credentials for its backend: a name that suggests one is never kept either.
CREDENTIAL_NAME = re.compile(r"auth|token|secret|passw|api[-_]?key|cookie|signature|credential|bearer|session-?key")


def header_allow_list(patterns: Iterable[str]) -> Callable[[bytes], bool]:
    """A predicate on raw (lower-case) header names: exact names, or prefixes ending in `*`.
    Answers are cached per name: the listener asks for every header of every request."""
    exact = {p.lower() for p in patterns if not p.endswith("*")}
    prefixes = tuple(p.lower()[:-1] for p in patterns if p.endswith("*"))

    @functools.lru_cache(maxsize=1024)
    def keep(name: bytes) -> bool:
        text = name.decode("latin-1").lower()
        if text in NEVER_KEPT_HEADERS or CREDENTIAL_NAME.search(text):
            return False
        return text in exact or text.startswith(prefixes)

    return keep


def build_envelope(
    *,
    received_at: datetime,
    agent_id: str,
    event_type: str,
    content_sha256: str,
    body: bytes,
    headers: Mapping[str, str] | list[tuple[bytes, bytes]],
    writer_id: str,
    error: str | None = None,
) -> bytes:
    """One landing line, newline-terminated. `body` is the exact raw request body."""
    return orjson.dumps(
        {
            "v": ENVELOPE_VERSION,
            "received_at": received_at.isoformat(timespec="microseconds"),
            "agent_id": agent_id,
            "event_type": event_type,
            "content_sha256": content_sha256,
            "body": body.decode("utf-8"),
            "headers": _kept_headers(headers),
            "writer_id": writer_id,
            "error": error,
        },
        option=orjson.OPT_APPEND_NEWLINE,
    )


@functools.lru_cache(maxsize=64)
def _partition(landing_dir: Path, day: tuple[int, int, int], hour: int) -> Path:
    return landing_dir / f"dt={day[0]:04d}-{day[1]:02d}-{day[2]:02d}" / f"hour={hour:02d}"


_DEFAULT_KEEP = header_allow_list(DEFAULT_KEPT_HEADERS)


def _kept_headers(headers: Mapping[str, str] | list[tuple[bytes, bytes]]) -> dict[str, str]:
    if isinstance(headers, list):  # raw ASGI headers: the default allow-list
        return {k.decode("latin-1"): v.decode("latin-1") for k, v in headers if _DEFAULT_KEEP(k)}
    return dict(headers)  # already chosen by the caller (the listener applies its allow-list)


def partition_dir(landing_dir: Path, received_at: datetime) -> Path:
    """`<landing>/dt=YYYY-MM-DD/hour=HH` of the receive time (cached: it is on the request path)."""
    return _partition(landing_dir, (received_at.year, received_at.month, received_at.day), received_at.hour)


def seal_path(open_path: Path) -> Path:
    return open_path.with_name(open_path.name[: -len(".open")])


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
