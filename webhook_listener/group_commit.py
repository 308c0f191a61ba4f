"""The request queue both landers share: group commit.

Requests hand their line to `land()` and wait on a future. One writer task takes everything
queued at once and writes it as one group (one fsync, or one object per hour); requests that
arrive meanwhile form the next group. A request is released only after its group is durable,
so nothing acknowledged is only in memory, and the cost of making it durable is shared.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from datetime import datetime
from typing import Any, Generic, TypeVar

log = logging.getLogger("webhook_listener.lander")

Where = TypeVar("Where")  # where a line goes: a partition directory, an hour prefix
Pending = tuple[bytes, Where, "asyncio.Future[None]"]


class RateLimitedErrorLog:
    """One ERROR line per `every_s` for a failing disk or store, with how many writes failed
    since the last line: a full disk under load fails every group, and a line per group
    (thousands a second) would fill the next disk with logs."""

    def __init__(self, every_s: float = 10.0):
        self.every_s = every_s
        self.failed_events = 0
        self._suppressed = 0
        self._last_logged = -float("inf")

    def report(self, exc: OSError, events: int) -> None:
        self.failed_events += events
        self._suppressed += events
        now = time.monotonic()
        if now - self._last_logged >= self.every_s:
            log.error(
                "landing write failed (%s): %d events answered 503 since the last report, %d in all",
                exc,
                self._suppressed,
                self.failed_events,
            )
            self._last_logged = now
            self._suppressed = 0


def new_writer_id() -> str:
    """Unique per process, so several listeners can share one landing directory or bucket."""
    host = "".join(c if c.isalnum() else "-" for c in socket.gethostname())[:32] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


class GroupCommitLander(Generic[Where]):
    """The request side and the writer task's plumbing; a lander says where a line goes
    (`where`) and how its writer task runs (`_run`, using `_wait_for_work` and `_take`)."""

    task_name = "lander"

    def __init__(self, writer_id: str | None = None):
        self.writer_id = writer_id or new_writer_id()
        # A plain list and one wake-up future: asyncio.Queue's bookkeeping per item showed
        # up in the listener's profile, and the writer always takes everything at once.
        self._pending: list[tuple[bytes, Where, asyncio.Future[None]]] = []
        self._wake: asyncio.Future[None] | None = None
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._write_errors = RateLimitedErrorLog()
        self.landed = 0
        self.groups = 0

    def where(self, received_at: datetime) -> Where:
        raise NotImplementedError

    async def _run(self) -> None:
        raise NotImplementedError

    @property
    def failed_writes(self) -> int:
        """Events answered 503 because their write failed (a full disk, a store down), since start."""
        return self._write_errors.failed_events

    def health(self) -> dict[str, Any]:
        return {"writer_id": self.writer_id, "landed": self.landed, "failed_writes": self.failed_writes}

    # --- lifecycle --------------------------------------------------------------------
    async def start(self) -> None:
        # Kept: asyncio.get_running_loop() makes a getpid() system call on every request.
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name=self.task_name)

    async def close(self) -> None:
        """Finish queued work (graceful shutdown)."""
        if self._task is not None:
            self._closing = True
            self._wake_writer()
            await self._task
            self._task = None

    # --- the request side -------------------------------------------------------------
    async def land(self, line: bytes, received_at: datetime) -> None:
        """Return once `line` is durable; raise OSError if it could not be written."""
        fut: asyncio.Future[None] = self._loop.create_future()  # type: ignore[union-attr]
        self._pending.append((line, self.where(received_at), fut))
        self._wake_writer()
        await fut

    def _wake_writer(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    # --- for the writer task ----------------------------------------------------------
    async def _wait_for_work(self, loop: asyncio.AbstractEventLoop, timeout: float | None = None) -> bool:
        """Sleep until a request arrives (True) or `timeout` passes (False)."""
        self._wake = loop.create_future()
        try:
            await asyncio.wait_for(self._wake, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self._wake = None

    async def _take(self) -> list[tuple[bytes, Where, asyncio.Future[None]]]:
        """Everything queued. One loop turn first lets every handler that is already runnable
        reach land(): groups several times larger at no cost in latency."""
        await asyncio.sleep(0)
        batch, self._pending = self._pending, []
        return batch

    @staticmethod
    def _release(futures: list[asyncio.Future[None]], error: BaseException | None) -> None:
        for fut in futures:
            if not fut.done():
                if error is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(error)
