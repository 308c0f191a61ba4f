"""Delivering the outbox: each endpoint on its own worker, so a slow or dead endpoint never
delays another, and never anything in the warehouse.

One attempt: POST the message's exact bytes with fresh Standard Webhooks headers (same
`webhook-id`, this attempt's timestamp), redirects not followed, one deadline for the whole
attempt. Then:

* 2xx: delivered.
* 410 Gone: the endpoint is disabled; its pending deliveries are dead-lettered.
* anything else (3xx, 4xx, 5xx, a timeout, a refused connection): retried on the schedule
  (`LAYERCODE_RESULT_WEBHOOK_RETRY_SCHEDULE_S`: the wait after each failed attempt), or at
  `Retry-After` when a 429/503 gives a later time; dead-lettered after the last retry.

An endpoint that times out or refuses the connection is skipped for the rest of the round
(its other messages wait, leases given back, no attempt counted), so a hung endpoint costs
one deadline per round and its queue does not pile up timeouts.
"""

from __future__ import annotations

import asyncio
import email.utils
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import httpx

from layercode_pipeline.config import ResultEndpoint
from layercode_pipeline.lib.result_webhooks.messages import CALL_ERASED
from layercode_pipeline.lib.result_webhooks.outbox import LEASE_MARGIN_S, Delivery, Outbox
from layercode_pipeline.lib.result_webhooks.signing import webhook_headers

Clock = Callable[[], float]
MAX_RETRY_AFTER_S = 24 * 3600.0


@dataclass
class RoundStats:
    delivered: int = 0
    retrying: int = 0
    dead: int = 0
    deferred: int = 0  # left for the next round: the endpoint was unresponsive
    busy_endpoints: int = 0  # still being worked on by an earlier round's worker
    errors: list[str] = field(default_factory=list)

    def add(self, other: RoundStats) -> None:
        self.delivered += other.delivered
        self.retrying += other.retrying
        self.dead += other.dead
        self.deferred += other.deferred
        self.errors += other.errors[:5]

    def summary(self) -> str:
        return (
            f"delivered {self.delivered}, retrying {self.retrying}, dead-lettered {self.dead}, deferred {self.deferred}"
        )


def retry_after_s(value: str | None, now: float) -> float | None:
    """`Retry-After` as seconds from now: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError):
        return None


def redact_url(url: str) -> str:
    """An endpoint as shown in logs and metadata: no query string (it may carry a token)."""
    return httpx.URL(url).copy_with(query=None, fragment=None).__str__()


class Dispatcher:
    """Delivers due messages. `run_round()` does one round for every endpoint; workers of a
    round still busy (a hung endpoint) keep their endpoint, and the next round skips it."""

    def __init__(
        self,
        outbox: Outbox,
        endpoints: list[ResultEndpoint],
        *,
        timeout_s: float = 10.0,
        schedule_s: list[float] | tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000),
        clock: Clock = time.time,
        batch: int = 5,
    ):
        self.outbox = outbox
        self.endpoints = {e.url: e for e in endpoints}
        self.timeout_s = timeout_s
        self.schedule_s = list(schedule_s)
        self.clock = clock
        self.batch = batch
        self._busy: dict[str, Future] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(endpoints)), thread_name_prefix="result-webhooks")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str | None]:
        """One POST under one deadline for the whole attempt (connect, send, the answer's
        status line and headers): a per-read timeout let an endpoint that trickles its answer
        hold an attempt past its lease, and another worker sent the same message at once.
        The answer's body is never read (its status is the answer): a gzip-encoded body cannot
        cost memory, whatever it inflates to."""
        async with asyncio.timeout(self.timeout_s):
            async with httpx.AsyncClient(follow_redirects=False, timeout=httpx.Timeout(self.timeout_s)) as client:
                response = await client.send(
                    client.build_request("POST", url, content=body, headers=headers), stream=True
                )
                try:
                    return response.status_code, response.headers.get("retry-after")
                finally:
                    await response.aclose()

    def __enter__(self) -> Dispatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- one round -----------------------------------------------------------------------
    def run_round(self, wait_s: float | None = None) -> RoundStats:
        """Start a worker for every idle endpoint with due messages; wait up to `wait_s` (None:
        until all are done). What is not finished keeps running and is counted next time."""
        stats = RoundStats()
        disabled = self.outbox.disabled_endpoints()
        started: list[Future] = []
        with self._lock:
            for url, endpoint in self.endpoints.items():
                if url in disabled:
                    stats.dead += self.outbox.disable_endpoint(url, disabled[url], self.clock())
                    continue
                busy = self._busy.get(url)
                if busy is not None and not busy.done():
                    stats.busy_endpoints += 1
                    continue
                future = self._pool.submit(self._drain_endpoint, endpoint)
                self._busy[url] = future
                started.append(future)
        done, _ = wait(started, timeout=wait_s)
        for f in done:
            stats.add(f.result())
        return stats

    def run_until_idle(self, deadline_s: float = 60.0) -> RoundStats:
        """Rounds until nothing is due now (or the deadline): what the demo and tests call."""
        total = RoundStats()
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            stats = self.run_round(wait_s=max(0.0, end - time.monotonic()))
            total.add(stats)
            due = self.outbox.next_due([u for u in self.endpoints if u not in self.outbox.disabled_endpoints()])
            if due is None or due > self.clock() or stats.deferred:
                break
        return total

    def _drain_endpoint(self, endpoint: ResultEndpoint) -> RoundStats:
        stats = RoundStats()
        while True:
            claimed = self.outbox.claim_due(
                endpoint.url, self.clock(), limit=self.batch, lease_s=self.batch * self.timeout_s + LEASE_MARGIN_S
            )
            if not claimed:
                return stats
            for i, d in enumerate(claimed):
                outcome = self._attempt(endpoint, d, stats)
                if outcome == "unresponsive":  # skip its other messages this round
                    rest = claimed[i + 1 :]
                    self.outbox.release(rest)
                    stats.deferred += len(rest)
                    return stats
                if outcome == "disabled":
                    return stats
            if len(claimed) < self.batch:
                return stats

    def _attempt(self, endpoint: ResultEndpoint, d: Delivery, stats: RoundStats) -> str:
        now = self.clock()
        timestamp = int(time.time())  # the wall clock, always: receivers check it against theirs
        headers = webhook_headers(endpoint.secrets, d.message_id, timestamp, d.body)
        status: int | None = None
        retry_hint: float | None = None
        unresponsive = False
        try:
            status, retry_after = asyncio.run(self._post(endpoint.url, d.body, headers))
            error = None if 200 <= status < 300 else f"HTTP {status}"
            if status in (429, 503):
                retry_hint = retry_after_s(retry_after, now)
        except (httpx.TimeoutException, TimeoutError) as exc:
            error, unresponsive = f"timeout after {self.timeout_s:g} s ({type(exc).__name__})", True
        except httpx.TransportError as exc:  # refused, reset, DNS: the endpoint is down
            error, unresponsive = f"{type(exc).__name__}: {str(exc)[:200]}", True
        at = self.clock()
        if status is not None and 200 <= status < 300:
            self.outbox.record_attempt(d, at=at, status=status, error=None, outcome="delivered")
            stats.delivered += 1
            if d.type == CALL_ERASED:  # it names the session: gone once every endpoint has it
                self.outbox.forget_delivered_erasures()
            return "delivered"
        if status == 410:
            self.outbox.record_attempt(d, at=at, status=status, error="410 Gone: endpoint disabled", outcome="dead")
            stats.dead += 1 + self.outbox.disable_endpoint(endpoint.url, "410 Gone", at)
            return "disabled"
        attempts = d.attempts + 1
        if attempts > len(self.schedule_s):
            self.outbox.record_attempt(d, at=at, status=status, error=error, outcome="dead")
            stats.dead += 1
        else:
            due = at + self.schedule_s[attempts - 1]
            if retry_hint is not None:
                due = max(due, at + min(retry_hint, MAX_RETRY_AFTER_S))
            self.outbox.record_attempt(d, at=at, status=status, error=error, outcome="retry", next_attempt_at=due)
            stats.retrying += 1
        stats.errors.append(f"{redact_url(endpoint.url)}: {error}")
        return "unresponsive" if unresponsive else "failed"
