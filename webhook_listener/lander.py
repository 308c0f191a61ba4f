"""Durable, group-committed landing of envelopes into append-only segment files.

The writer task (see `group_commit`) takes everything queued, writes it with one `write`, and
fdatasyncs once for the whole group: a request is released only after its bytes are on
disk, so nothing acknowledged can be lost, and the fsync cost is shared by all concurrent
requests.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from layercode_pipeline.config import Settings
from layercode_pipeline.contract.landing import OPEN_SUFFIX, partition_dir, seal_path
from layercode_pipeline.landing.durable import fsync_dir, write_whole
from layercode_pipeline.landing.objects import ObjectLanding

from .group_commit import GroupCommitLander

log = logging.getLogger("webhook_listener.lander")


@dataclass
class _Segment:
    fd: int
    open_path: Path
    partition: Path
    opened_at: float
    size: int = 0
    last_write: float = 0.0


class SegmentLander(GroupCommitLander[Path]):
    task_name = "segment-lander"

    def __init__(
        self,
        landing_dir: Path,
        *,
        writer_id: str | None = None,
        max_bytes: int = 64 * 1024 * 1024,
        max_age_s: float = 10.0,
        idle_seal_s: float = 1.0,
        inline_sync_below_s: float = 0.002,
    ):
        super().__init__(writer_id)
        self.landing_dir = landing_dir
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        # A segment is sealed (handed to the ingest) when it is full, old, or when no event
        # has arrived for `idle_seal_s`: the last calls before a quiet spell reach the
        # warehouse in seconds. Under load the writer is never idle that long, so this adds no
        # seal (and no fsync) per group.
        self.idle_seal_s = idle_seal_s
        self._seq = 0
        self._segment: _Segment | None = None
        # Where a group's write+fdatasync runs. A worker thread lets the loop parse the next
        # group meanwhile, but each hand-off contends for the GIL with the busy loop: on a disk
        # that syncs in ~0.3 ms that cost the listener a fifth of its throughput
        # (bench/listener_bench.py), more than the sync itself. So groups are synced on the loop
        # while a sync takes less than `inline_sync_below_s` on average, in the thread otherwise.
        self.inline_sync_below_s = inline_sync_below_s
        self.sync_seconds_avg = 0.0  # exponentially weighted, over recent groups
        self.threaded_groups = 0

    def where(self, received_at: datetime) -> Path:
        return partition_dir(self.landing_dir, received_at)

    def health(self) -> dict:
        return {
            **super().health(),
            "fsync_groups": self.groups,
            "fsync_groups_in_thread": self.threaded_groups,
            "fsync_ms_avg": round(self.sync_seconds_avg * 1000, 3),
        }

    # --- lifecycle --------------------------------------------------------------------
    async def start(self) -> None:
        self.landing_dir.mkdir(parents=True, exist_ok=True)
        await super().start()

    async def close(self) -> None:
        """Finish queued work, then seal the open segment (graceful shutdown)."""
        await super().close()
        self._seal()

    # --- the writer task --------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()  # once per writer task, not per request
        while True:
            if not self._pending:
                if self._closing:
                    return
                # Idle: sleep until a request arrives, or until the open segment is due to be
                # sealed, by age or by idleness (busy, age is checked on each write instead).
                seg = self._segment
                timeout = (
                    None
                    if seg is None
                    else max(
                        0.0, min(seg.opened_at + self.max_age_s, seg.last_write + self.idle_seal_s) - time.monotonic()
                    )
                )
                if not await self._wait_for_work(loop, timeout):
                    self._seal()
                    continue
            batch = await self._take()
            try:
                if self.sync_seconds_avg < self.inline_sync_below_s:
                    errors = self._write_group(batch)
                else:
                    self.threaded_groups += 1
                    errors = await asyncio.to_thread(self._write_group, batch)
            except BaseException as exc:  # never leave a request hanging
                errors = [exc] * len(batch)
            for (_, _, fut), err in zip(batch, errors, strict=True):
                self._release([fut], err)

    def _write_group(self, batch: list[tuple[bytes, Path, asyncio.Future[None]]]) -> list[BaseException | None]:
        """Lines of one partition are written and synced together (on the loop or in a thread)."""
        started = time.perf_counter()
        errors: list[BaseException | None] = [None] * len(batch)
        i = 0
        while i < len(batch):
            partition = batch[i][1]
            j = i
            while j < len(batch) and batch[j][1] == partition:
                j += 1
            try:
                self._append(partition, b"".join(item[0] for item in batch[i:j]))
            except OSError as exc:
                self._write_errors.report(exc, j - i)
                for k in range(i, j):
                    errors[k] = exc
            i = j
        self.groups += 1
        self.sync_seconds_avg = 0.8 * self.sync_seconds_avg + 0.2 * (time.perf_counter() - started)
        return errors

    def _append(self, partition: Path, data: bytes) -> None:
        seg = self._segment
        if seg is not None and (
            seg.partition != partition
            or seg.size + len(data) > self.max_bytes
            or time.monotonic() - seg.opened_at >= self.max_age_s
        ):
            self._seal()
            seg = None
        if seg is None:
            seg = self._segment = self._open(partition)
        start = seg.size
        try:
            write_whole(seg.fd, data)
            os.fdatasync(seg.fd)
        except OSError:
            # Take the torn group back out so the file stays whole lines, then start a
            # fresh segment; the callers get the error and answer 503.
            try:
                os.ftruncate(seg.fd, start)
                os.fsync(seg.fd)
            except OSError:
                pass
            self._seal()
            raise
        seg.size += len(data)
        seg.last_write = time.monotonic()
        self.landed += data.count(b"\n")

    def _open(self, partition: Path) -> _Segment:
        partition.mkdir(parents=True, exist_ok=True)
        while True:
            self._seq += 1
            open_path = partition / f"{self.writer_id}-{self._seq:06d}{OPEN_SUFFIX}"
            try:
                fd = os.open(open_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
                break
            except FileExistsError:
                continue
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # tells recovery we are alive
        fsync_dir(partition)
        now = time.monotonic()
        return _Segment(fd=fd, open_path=open_path, partition=partition, opened_at=now, last_write=now)

    def _seal(self) -> None:
        seg, self._segment = self._segment, None
        if seg is None:
            return
        try:
            if seg.size == 0:
                os.unlink(seg.open_path)
            else:
                os.fsync(seg.fd)
                os.rename(seg.open_path, seal_path(seg.open_path))
            fsync_dir(seg.partition)
        finally:
            os.close(seg.fd)


def choose_lander(settings: Settings) -> tuple[GroupCommitLander[Any], Any, dict[str, str]]:
    """The lander `settings` ask for, the background shipper of `local+ship` (else None), and
    how the listener describes its landing on /healthz. The one place the mode is decided."""
    object_landing = ObjectLanding.from_settings(settings)
    if object_landing is not None and settings.landing_mode == "bucket":
        from .object_lander import BucketLander

        return (
            BucketLander(object_landing),
            None,
            {
                "url": object_landing.url,
                "mode": "bucket",
                "acknowledged_after": "the group's object is written to the store",
            },
        )
    lander = SegmentLander(
        settings.paths.landing,
        max_bytes=settings.segment_max_bytes,
        max_age_s=settings.segment_max_age_s,
        idle_seal_s=settings.segment_idle_seal_s,
    )
    if object_landing is None:
        return (
            lander,
            None,
            {
                "url": str(settings.paths.landing),
                "mode": "local",
                "acknowledged_after": "the group is fsynced to the local disk",
            },
        )
    from .object_lander import SegmentShipper

    shipper = SegmentShipper(settings.paths.landing, object_landing, interval_s=settings.landing_ship_interval_s)
    return (
        lander,
        shipper,
        {
            "url": object_landing.url,
            "mode": "local+ship",
            "spool": str(settings.paths.landing),
            "acknowledged_after": "the group is fsynced to the local spool; sealed segments are "
            "shipped to the store in the background",
        },
    )
