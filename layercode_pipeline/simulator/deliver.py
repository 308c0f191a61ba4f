"""Deliver a batch's webhooks to a listener the way Layercode does, with faults.

Per session, in order: `session.start`, one `message` per caller turn (each followed by the
`data` events the caller's client sent during it), `session.end`, and later `session.update`
once the recording is "ready". Every request carries the session's custom headers. An SSE
reply is read to its end, except where the caller barged in: Layercode tears that reply down
mid-stream (contract section 5), and so does this deliverer. Many sessions are in flight at
once.

One attempt per event by default: Layercode documents no webhook retries, so a failed
delivery is lost unless the REST backfill repairs it. `max_attempts > 1` is an opt-in for
load tests. Every attempt is recorded in `DeliveryReport.log` so tests can check that every
acknowledged event was landed.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from layercode_pipeline.contract.events import EVENT_TYPES, SESSION_END, SESSION_UPDATE
from layercode_pipeline.contract.signing import SIGNATURE_HEADER, sign

from .generate import SimBatch, SimSession

WEBHOOK_FAULTS = ("drop_session_end", "drop_session_update", "duplicate", "out_of_order", "burst")
DEFAULT_FAULTS = {"drop_session_end": 0.05, "drop_session_update": 0.05, "duplicate": 0.03, "out_of_order": 0.05}


@dataclass
class Attempt:
    session_id: str
    agent_id: str
    event_type: str
    turn_id: str | None
    content_sha256: str
    status: int | None
    error: str | None = None
    sse_complete: bool | None = None
    sse_torn: bool = False  # the deliverer tore the reply down mid-stream (a barge-in)


@dataclass
class DeliveryReport:
    log: list[Attempt] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (session_id, event_type) never sent
    elapsed_s: float = 0.0

    @property
    def sent(self) -> int:
        return len(self.log)

    @property
    def acknowledged(self) -> list[Attempt]:
        return [a for a in self.log if a.status is not None and 200 <= a.status < 300]

    @property
    def failed(self) -> int:
        return sum(1 for a in self.log if a.status is None or a.status >= 300)

    @property
    def sse_replies(self) -> int:
        return sum(1 for a in self.log if a.sse_complete is not None)

    @property
    def sse_complete(self) -> int:
        return sum(1 for a in self.log if a.sse_complete)

    @property
    def sse_torn(self) -> int:
        return sum(1 for a in self.log if a.sse_torn)

    def summary(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "acknowledged": len(self.acknowledged),
            "failed": self.failed,
            "sse_replies": self.sse_replies,
            "sse_complete": self.sse_complete,
            "sse_torn_by_barge_in": self.sse_torn,
            "dropped_by_fault": len(self.dropped),
            "elapsed_s": round(self.elapsed_s, 3),
            "events_per_s": round(self.sent / self.elapsed_s, 1) if self.elapsed_s else None,
        }


def parse_fault_specs(specs: list[str] | tuple[str, ...]) -> dict[str, float]:
    """`["duplicate=0.1", "rate_limit=0.05"]` -> {"duplicate": 0.1, ...} (webhook or API faults)."""
    from .api import API_FAULTS

    out: dict[str, float] = {}
    for spec in specs:
        name, sep, rate = spec.partition("=")
        if not sep or name not in WEBHOOK_FAULTS + API_FAULTS:
            raise ValueError(f"fault must be NAME=RATE with NAME in {WEBHOOK_FAULTS + API_FAULTS}, got {spec!r}")
        value = float(rate)
        if not 0 <= value <= 1:
            raise ValueError(f"fault rate must be within 0..1, got {spec!r}")
        out[name] = value
    return out


def plan_session(
    session: SimSession, faults: dict[str, float], r: random.Random
) -> tuple[list[dict[str, Any]], list[str]]:
    """The bodies to post for one session, in delivery order, and the event types dropped."""
    events: list[dict[str, Any]] = session.conversation_events()
    dropped: list[str] = []
    tail: list[dict[str, Any]] = []
    if r.random() < faults.get("drop_session_end", 0.0):
        dropped.append("session.end")
    else:
        tail.append(session.session_end())
    update = session.session_update()
    if update is not None:
        if r.random() < faults.get("drop_session_update", 0.0):
            dropped.append("session.update")
        else:
            tail.append(update)
    if len(tail) == 2 and r.random() < faults.get("out_of_order", 0.0):
        tail.reverse()  # the recording's update overtakes the end of the call
    events += tail
    out: list[dict[str, Any]] = []
    for event in events:
        out.append(event)
        if r.random() < faults.get("duplicate", 0.0):
            out.append(event)  # a redelivery: same body
    return out, dropped


class Deliverer:
    def __init__(
        self,
        batch: SimBatch,
        webhook_url: str,
        *,
        faults: dict[str, float] | None = None,
        concurrency: int = 32,
        pace_s: float = 0.0,
        update_delay_s: float = 0.0,
        seed: int | None = None,
        secret_override: str | None = None,
        timeout_s: float = 30.0,
        max_attempts: int = 1,
        on_session_end: Callable[[SimSession], None] | None = None,
        on_event: Callable[[Attempt], None] | None = None,
    ):
        self.batch = batch
        self.webhook_url = webhook_url
        self.faults = {k: v for k, v in (faults or {}).items() if k in WEBHOOK_FAULTS}
        self.concurrency = concurrency
        self.pace_s = pace_s
        self.update_delay_s = update_delay_s
        self.rng = random.Random(f"deliver-{batch.seed if seed is None else seed}")
        self.secret_override = secret_override
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.on_session_end = on_session_end
        self.on_event = on_event
        self.report = DeliveryReport()
        self._plans: list[tuple[SimSession, list[dict[str, Any]], bool]] | None = None

    def url_for(self, agent_id: str) -> str:
        return self.webhook_url.replace("{agent_id}", agent_id)

    def plan(self) -> list[tuple[SimSession, list[dict[str, Any]], bool]]:
        """Decide every fault up front, so they do not depend on timing. Idempotent."""
        if self._plans is None:
            self._plans = []
            for s in self.batch.sessions:
                events, dropped = plan_session(s, self.faults, self.rng)
                burst = self.rng.random() < self.faults.get("burst", 0.0)
                self._plans.append((s, events, burst))
                self.report.dropped += [(s.session_id, d) for d in dropped]
        return self._plans

    @property
    def planned_events(self) -> int:
        return sum(len(events) for _, events, _ in self.plan())

    async def run(self) -> DeliveryReport:
        plans = self.plan()
        # aiohttp rather than httpx here: it is a load generator, and httpx's async pool fell
        # from 720 to 360 requests/s going from 8 to 64 connections where aiohttp gave 3,600.
        sem = asyncio.Semaphore(self.concurrency)
        started = time.perf_counter()
        connector = aiohttp.TCPConnector(limit=self.concurrency)
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:

            async def one(s: SimSession, events: list[dict[str, Any]], burst: bool) -> None:
                async with sem:
                    await self._deliver_session(client, s, events, burst)

            await asyncio.gather(*(one(*p) for p in plans))
        self.report.elapsed_s = time.perf_counter() - started
        return self.report

    async def _deliver_session(
        self, client: aiohttp.ClientSession, s: SimSession, events: list[dict[str, Any]], burst: bool
    ) -> None:
        secret = self.secret_override or self.batch.agent(s.agent_id).secret
        url = self.url_for(s.agent_id)
        torn = s.torn_replies()
        for event in events:
            if event["type"] == SESSION_UPDATE and self.update_delay_s and not burst:
                await asyncio.sleep(self.update_delay_s)
            body = orjson.dumps(event)
            tear = EVENT_TYPES[event["type"]].sse_reply and event.get("turn_id") in torn
            await self._post(client, url, secret, s, event, body, tear)
            if event["type"] == SESSION_END and self.on_session_end is not None:
                self.on_session_end(s)
            if self.pace_s and not burst:
                await asyncio.sleep(self.pace_s)

    async def _post(
        self,
        client: aiohttp.ClientSession,
        url: str,
        secret: str,
        s: SimSession,
        event: dict[str, Any],
        body: bytes,
        tear: bool = False,
    ) -> None:
        sha = hashlib.sha256(body).hexdigest()
        for attempt in range(1, self.max_attempts + 1):
            rec = Attempt(s.session_id, s.agent_id, event["type"], event.get("turn_id"), sha, None)
            try:
                headers = {
                    **s.headers,
                    SIGNATURE_HEADER: sign(body, secret),
                    "content-type": "application/json",
                    "user-agent": "layercode-simulator",
                }
                async with client.post(url, data=body, headers=headers) as resp:
                    rec.status = resp.status
                    if resp.status == 200 and resp.content_type == "text/event-stream" and tear:
                        await resp.content.readline()  # the caller spoke over the first words:
                        resp.close()  # the platform tears the connection down mid-stream
                        rec.sse_complete, rec.sse_torn = False, True
                    elif resp.status == 200 and resp.content_type == "text/event-stream":
                        rec.sse_complete = await _read_sse(resp, event.get("turn_id"))
                    else:
                        await resp.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # Ctrl-C cancelled this request, and aiohttp may report a cancellation as a
                    # timeout: that is an interrupt, not a failed delivery to retry
                    raise asyncio.CancelledError from exc
                rec.error = f"{type(exc).__name__}: {exc}"
            self.report.log.append(rec)
            if self.on_event is not None:
                self.on_event(rec)
            retryable = rec.status is None or rec.status >= 500 or rec.status == 429
            if not retryable:
                return
            await asyncio.sleep(0.05 * attempt)


async def _read_sse(resp: aiohttp.ClientResponse, turn_id: str | None) -> bool:
    """True when the stream ends with `response.end` and every event carries `turn_id`."""
    last_type = None
    ok = True
    async for raw in resp.content:
        if raw.startswith(b"data:"):
            data = orjson.loads(raw[5:].strip())
            last_type = data.get("type")
            ok &= data.get("turn_id") == turn_id
    return ok and last_type == "response.end"


def deliver_with_progress(deliverer: Deliverer, console: Any | None) -> DeliveryReport:
    """Run a delivery with a rich progress bar on `console` (none: silently)."""
    if console is None:
        return asyncio.run(deliverer.run())
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("delivering signed webhooks", total=deliverer.planned_events)
        deliverer.on_event = lambda attempt: progress.advance(task)
        return asyncio.run(deliverer.run())


def deliver(batch: SimBatch, webhook_url: str, **kwargs: Any) -> DeliveryReport:
    """Synchronous wrapper for scripts and tests."""
    return asyncio.run(Deliverer(batch, webhook_url, **kwargs).run())
