"""Landing into object storage, in the two modes an operator can choose (README: Landing).

`BucketLander` (`bucket` mode): group commit to the store. Requests queue their line; one
writer takes everything queued and writes it as ONE object per hour of the group (never an
object per event), and each request is released only after the PUT succeeded, so nothing
acknowledged is only in memory. Up to `max_in_flight` groups are being written at once, so a
slow PUT does not stall the groups behind it.

`SegmentShipper` (`local+ship` mode): the `SegmentLander` lands on the local disk as usual
(acknowledged after the fsync); sealed segments are shipped to the store in the background
and removed locally once the store has them. What is left after a crash (the lander seals
orphans at start) is shipped on the next start; `/healthz` shows the backlog.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from layercode_pipeline.landing.durable import fsync_dir
from layercode_pipeline.landing.objects import ObjectLanding, hour_prefix, object_key
from layercode_pipeline.landing.segments import iter_sealed_segments

from .group_commit import GroupCommitLander

log = logging.getLogger("webhook_listener.object_lander")


class BucketLander(GroupCommitLander[str]):
    task_name = "bucket-lander"

    def __init__(self, landing: ObjectLanding, *, writer_id: str | None = None, max_in_flight: int = 4):
        super().__init__(writer_id)
        self.landing = landing
        self.store = landing.store()
        self.max_in_flight = max_in_flight
        self._seq = 0
        self._slots: asyncio.Semaphore | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self.objects = 0
        self.put_seconds_avg = 0.0

    def where(self, received_at: datetime) -> str:
        return hour_prefix(received_at)

    def health(self) -> dict[str, Any]:
        return {
            **super().health(),
            "groups": self.groups,
            "objects_written": self.objects,
            "put_ms_avg": round(self.put_seconds_avg * 1000, 3),
        }

    async def start(self) -> None:
        self._slots = asyncio.Semaphore(self.max_in_flight)
        await super().start()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._slots is not None
        while True:
            await self._slots.acquire()  # the queue grows into a bigger group while all slots are busy
            if not self._pending:
                if self._closing:
                    self._slots.release()
                    if self._in_flight:
                        await asyncio.gather(*self._in_flight, return_exceptions=True)
                    return
                await self._wait_for_work(loop)
            batch = await self._take()
            if not batch:
                self._slots.release()
                continue
            task = asyncio.create_task(self._write_group(batch))
            self._in_flight.add(task)
            task.add_done_callback(self._group_done)

    def _group_done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        assert self._slots is not None
        self._slots.release()

    async def _write_group(self, batch: list[tuple[bytes, str, asyncio.Future[None]]]) -> None:
        import obstore

        started = time.perf_counter()
        by_hour: dict[str, list[tuple[bytes, asyncio.Future[None]]]] = {}
        for line, hour, fut in batch:
            by_hour.setdefault(hour, []).append((line, fut))
        for hour, items in by_hour.items():
            self._seq += 1
            key = object_key(hour, self.writer_id, self._seq)
            error: BaseException | None = None
            try:
                # mode="create": a name is never overwritten (the writer id and sequence make it unique)
                await obstore.put_async(self.store, key, b"".join(line for line, _ in items), mode="create")
                self.objects += 1
                self.landed += len(items)
            except Exception as exc:  # noqa: BLE001 - any store failure is a 503 for these requests
                error = OSError(f"object store write failed: {type(exc).__name__}: {str(exc)[:200]}")
                self._write_errors.report(error, len(items))
            self._release([fut for _, fut in items], error)
        self.groups += 1
        self.put_seconds_avg = 0.8 * self.put_seconds_avg + 0.2 * (time.perf_counter() - started)


class SegmentShipper:
    """Ships sealed local segments to the store, then removes them locally."""

    def __init__(self, landing_dir: Path, landing: ObjectLanding, *, interval_s: float = 1.0):
        self.landing_dir = landing_dir
        self.landing = landing
        self.store = landing.store()
        self.interval_s = interval_s
        self.shipped = 0
        self.ship_errors = 0
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None

    def backlog(self) -> tuple[int, int]:
        """Sealed segments not shipped yet, and their bytes."""
        count = size = 0
        for path in iter_sealed_segments(self.landing_dir):
            try:
                size += path.stat().st_size
                count += 1
            except FileNotFoundError:
                continue
        return count, size

    def health(self) -> dict[str, Any]:
        count, size = self.backlog()
        return {
            "unshipped_segments": count,
            "unshipped_bytes": size,
            "shipped_segments": self.shipped,
            "ship_errors": self.ship_errors,
            "last_ship_error": self.last_error,
        }

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="segment-shipper")

    async def close(self) -> None:
        """Stop the loop, then ship what the lander sealed on its way out (or leave it for the
        next start if the store cannot be reached)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self.ship_once()

    async def _run(self) -> None:
        while True:
            await self.ship_once()
            await asyncio.sleep(self.interval_s)

    async def ship_once(self) -> int:
        import obstore
        from obstore.exceptions import AlreadyExistsError

        shipped = 0
        for path in list(iter_sealed_segments(self.landing_dir)):
            # keyed by the hour it is shipped in, so the ingest finds it among the newest prefixes
            # even when it was sealed long ago (a backlog shipped after a crash)
            key = hour_prefix(datetime.now(UTC)) + path.name
            try:
                await obstore.put_async(self.store, key, path, mode="create")
            except AlreadyExistsError:
                pass  # shipped before a crash that came before the local removal
            except FileNotFoundError:
                continue
            except Exception as exc:  # noqa: BLE001 - the store is down: keep it, try again later
                self.ship_errors += 1
                self.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
                log.warning("shipping %s failed (kept locally, retried): %s", path.name, self.last_error)
                break
            os.unlink(path)
            fsync_dir(path.parent)
            shipped += 1
        self.shipped += shipped
        return shipped
