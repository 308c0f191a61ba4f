"""A customer's product receiving result webhooks: every delivery verified with the
`standardwebhooks` package (the reference implementation of the spec, not this project's
signing code), de-duplicated by `webhook-id` as the spec tells receivers to do.

The demo, the bench and the tests run it on loopback; `fault` makes it misbehave (answer
500, hang, redirect, ...) for the delivery tests.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

Fault = Callable[[int], Awaitable[Response | None]]


@dataclass
class Received:
    webhook_id: str
    type: str
    session_id: str | None
    body: dict[str, Any]
    received_at: float


@dataclass
class ResultReceiver:
    """An ASGI app at any path. `fault(n)` (n: the request's number, from 1) may answer instead."""

    secret: str
    fault: Fault | None = None
    # the status to answer after a delivery was verified and kept (n: the request's number):
    # a receiver that keeps a message but fails to say so gets it again, same webhook-id
    status_after: Callable[[int], int] | None = None
    received: list[Received] = field(default_factory=list)  # every verified delivery, duplicates too
    rejected: int = 0  # deliveries whose signature did not verify
    requests: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.verifier = Webhook(self.secret)
        self.app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["POST"])])

    async def _handle(self, request: Request) -> Response:
        with self._lock:
            self.requests += 1
            n = self.requests
        if self.fault is not None:
            answer = await self.fault(n)
            if answer is not None:
                return answer
        body = await request.body()
        try:
            payload = self.verifier.verify(body, dict(request.headers))
        except WebhookVerificationError as exc:
            with self._lock:
                self.rejected += 1
            return JSONResponse({"error": str(exc)}, status_code=401)
        with self._lock:
            self.received.append(
                Received(
                    request.headers["webhook-id"],
                    payload.get("type"),
                    (payload.get("data") or {}).get("session_id"),
                    payload,
                    time.time(),
                )
            )
        status = self.status_after(n) if self.status_after is not None else 200
        return JSONResponse({"ok": status < 300}, status_code=status)

    # --- what arrived ----------------------------------------------------------------------
    def unique(self, event_type: str | None = None) -> dict[str, Received]:
        """The first arrival of each webhook-id (what a de-duplicating receiver keeps)."""
        out: dict[str, Received] = {}
        with self._lock:
            for r in self.received:
                if event_type is None or r.type == event_type:
                    out.setdefault(r.webhook_id, r)
        return out


async def hang_forever(_: int) -> Response:
    await asyncio.sleep(3600)
    return Response(status_code=200)
