"""The ASGI app: `POST /webhook`, `POST /agents/{agent_id}/webhook`, `GET /healthz`.

Order of work per request, chosen so nothing is acknowledged before it is durable:
size limit -> signature over the raw bytes -> JSON -> model validation -> land (fsync)
-> status line (SSE or JSON). Every refusal answers JSON `{"error": code, "detail": ...}`.

The app is a Starlette `Router` (routing, 404/405, lifespan) without the `Starlette`
middleware stack, and the webhook routes' endpoint is a plain ASGI callable
(`WebhookEndpoint`) that reads `receive` and writes `send` directly instead of building a
`Request` and a `Response` per call: together about a quarter of the listener's CPU under
load (py-spy, bench/listener_bench.py). An exception escaping a request still becomes a
500 from uvicorn, logged with its traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import inspect
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router
from starlette.types import Receive, Scope, Send

from layercode_pipeline.config import Settings
from layercode_pipeline.contract.events import (
    SSE_EVENT_TYPES,
    DataEvent,
    MessageEvent,
    ResponseData,
    ResponseEnd,
    ResponseError,
    ResponseTTS,
    SessionStartEvent,
    parse_event_json,
    validation_reason,
)
from layercode_pipeline.contract.landing import build_envelope, header_allow_list
from layercode_pipeline.contract.signing import SIGNATURE_HEADER, SignatureError, verify_signature
from layercode_pipeline.landing.durable import quarantine
from layercode_pipeline.landing.segments import recover_orphan_segments

from .access_log import AccessLog
from .group_commit import GroupCommitLander
from .lander import SegmentLander, choose_lander
from .responder import Data, DataResponder, Responder, load_data_responder, load_responder
from .slow_clients import HeaderTimeoutProtocol

log = logging.getLogger("webhook_listener")

_SIGNATURE_HEADER = SIGNATURE_HEADER.lower().encode()
_JSON_HEADERS = [(b"content-type", b"application/json")]
# As the official SDK sends them; `content-encoding: none` keeps proxies from buffering the stream.
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"content-encoding", b"none"),
    (b"x-accel-buffering", b"no"),
]


class BodyTooLarge(Exception):
    pass


class ClientGone(Exception):
    pass


class ReplyCancelled(Exception):
    """The caller barged in and Layercode cancelled the request mid-reply."""


class Refusal(Exception):
    """A webhook refused: the status, the `error` code and `detail` answered as JSON, and the
    reason the access log records (the error code unless it says more)."""

    def __init__(self, status: int, error: str, detail: str, *, reason: str | None = None, close: bool = False):
        super().__init__(f"{status} {error}: {detail}")
        self.status, self.error, self.detail = status, error, detail
        self.reason = reason or error
        self.close = close  # the body was not read to its end: the connection cannot be reused


@dataclass
class _Call:
    """What is known about a request so far, for its access-log line."""

    started: float
    agent_id: str
    event_type: str | None = None
    session_id: str | None = None


def _sse(event: BaseModel) -> bytes:
    return b"data: " + orjson.dumps(event.model_dump()) + b"\n\n"


def _sse_item(item: Any, turn_id: str) -> bytes:
    return _sse(
        ResponseData(content=item.content, turn_id=turn_id)
        if isinstance(item, Data)
        else ResponseTTS(content=str(item), turn_id=turn_id)
    )


async def _send_json(send: Send, status: int, content: object, *, close: bool = False) -> None:
    body = orjson.dumps(content)
    headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    if close:  # the request was not read to its end: the connection cannot be reused
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive, declared: int | None, limit: int) -> bytes:
    """Read at most `limit` bytes; refuse early on Content-Length, else while streaming."""
    if declared is not None and declared > limit:
        raise BodyTooLarge(f"Content-Length {declared} exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"body exceeds {limit} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _utf8_problem(body: bytes) -> str | None:
    """Where a body stops being UTF-8, in words (orjson's own text for it speaks of surrogates)."""
    try:
        body.decode("utf-8")
        return None
    except UnicodeDecodeError as exc:
        return f"body is not UTF-8 (byte 0x{body[exc.start]:02x} at offset {exc.start})"


class WebhookEndpoint:
    """ASGI endpoint for both webhook routes (the agent comes from the path or the default)."""

    def __init__(
        self,
        settings: Settings,
        lander: GroupCommitLander[Any],
        respond: Responder,
        access_log: AccessLog,
        *,
        insecure_skip_verify: bool,
        answer_data: DataResponder | None = None,
    ):
        self.settings = settings
        self.secrets = settings.agent_secrets
        self.lander = lander
        self.respond = respond
        self.answer_data = answer_data
        self.access_log = access_log
        self.insecure_skip_verify = insecure_skip_verify
        self.quarantine_dir = settings.paths.quarantine
        self.keep_header = header_allow_list(settings.kept_headers)
        self.minimisation = settings.minimisation()  # the caller's IP, phone numbers (contract/minimise.py)

    def kept_headers(self, raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
        """The request headers the operator allows (`LAYERCODE_KEPT_HEADERS`): customer data such
        as Layercode's custom headers (`x-tenant-id`), never a credential."""
        return {name.decode("latin-1"): value.decode("latin-1") for name, value in raw if self.keep_header(name)}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one webhook: every refusal is a `Refusal`, logged and answered here."""
        call = _Call(
            started=time.perf_counter(), agent_id=scope.get("path_params", {}).get("agent_id", self.settings.agent_id)
        )
        try:
            await self.handle(call, scope, receive, send)
        except Refusal as refusal:
            self.access_log.record(
                call.started, call.agent_id, call.event_type, call.session_id, refusal.status, refusal.reason
            )
            await _send_json(
                send, refusal.status, {"error": refusal.error, "detail": refusal.detail}, close=refusal.close
            )
        except ClientGone:
            return  # nothing to answer, nothing acknowledged

    async def handle(self, call: _Call, scope: Scope, receive: Receive, send: Send) -> None:
        """Read the body (size and time limits), verify its signature, parse it, land it, answer it."""
        body = await self.read_verified_body(call, scope, receive)
        received_at = datetime.now(UTC)
        payload = self.parse_or_quarantine(call, body, received_at)
        call.event_type = event_type = payload["type"]
        call.session_id = payload["session_id"] if isinstance(payload.get("session_id"), str) else None
        error: str | None = None
        event = None
        # the identity of what Layercode sent (duplicates and retries share it), taken before
        # the body is minimised: the landed body may differ from these bytes
        content_sha256 = hashlib.sha256(body).hexdigest()
        if self.minimisation.changes_anything and self.minimisation.apply(payload):
            body = orjson.dumps(payload)  # landed as minimised: the IP or the number never reaches a disk
        try:
            event = parse_event_json(body, event_type)  # None for a type we do not know: kept as is
        except ValidationError as exc:
            error = validation_reason(exc)

        line = build_envelope(
            received_at=received_at,
            agent_id=call.agent_id,
            event_type=event_type,
            content_sha256=content_sha256,
            body=body,
            headers=self.kept_headers(scope["headers"]),
            writer_id=self.lander.writer_id,
            error=error,
        )
        try:
            await self.lander.land(line, received_at)
        except OSError as exc:
            raise Refusal(
                503,
                "storage_unavailable",
                f"event not stored, retry later: {exc.strerror or exc}",
                reason="landing_failed",
            ) from exc

        if error is not None:  # kept, but we cannot answer it as the type requires
            raise Refusal(422, "invalid_event", error)
        record = self.access_log.record
        if event_type in SSE_EVENT_TYPES:
            try:
                await self.stream_reply(receive, send, event)  # type: ignore[arg-type]
            except (ReplyCancelled, OSError):
                # A barge-in: Layercode cancels the request that streams the reply when the
                # caller interrupts (contract section 5). The event was landed before the first
                # byte, so nothing is lost: a cancelled reply, not a server error.
                record(call.started, call.agent_id, event_type, call.session_id, 200, "reply_cancelled")
                return
            record(call.started, call.agent_id, event_type, call.session_id, 200)
            return
        answer: object = {"status": "ok", "type": event_type}
        if isinstance(event, DataEvent):
            answer = await self.data_answer(event)
        record(call.started, call.agent_id, event_type, call.session_id, 200)
        await _send_json(send, 200, answer)

    async def read_verified_body(self, call: _Call, scope: Scope, receive: Receive) -> bytes:
        """The raw body, once its agent is known, its size and time within limits and (unless
        verification is off) its signature matches one of the agent's secrets."""
        agent_secrets = self.secrets.get(call.agent_id)
        if agent_secrets is None and not self.insecure_skip_verify:
            raise Refusal(401, "unknown_agent", f"no webhook secret configured for agent {call.agent_id!r}")
        declared: int | None = None
        signature: str | None = None
        signatures = 0
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = int(value) if value.isdigit() else None
            elif name == _SIGNATURE_HEADER:
                signature = value.decode("latin-1")
                signatures += 1
        if signatures > 1 and not self.insecure_skip_verify:
            raise Refusal(401, "ambiguous_signature", f"{signatures} {SIGNATURE_HEADER} headers; send one")
        try:
            async with asyncio.timeout(self.settings.body_timeout_s):
                body = await _read_body(receive, declared, self.settings.max_body_bytes)
        except TimeoutError as exc:
            raise Refusal(
                408,
                "request_timeout",
                f"body not received within {self.settings.body_timeout_s:g} s",
                reason="body_timeout",
                close=True,
            ) from exc
        except BodyTooLarge as exc:
            raise Refusal(413, "body_too_large", str(exc)) from exc
        if not self.insecure_skip_verify:
            try:
                verify_signature(body, signature, agent_secrets or (), tolerance_s=self.settings.signature_tolerance_s)
            except SignatureError as exc:
                raise Refusal(401, exc.reason, exc.detail) from exc
        return body

    def parse_or_quarantine(self, call: _Call, body: bytes, received_at: datetime) -> dict[str, Any]:
        """The body as a JSON object with a string `type`; a signed body that is not one is kept
        in quarantine, byte for byte, and refused."""
        try:
            payload = orjson.loads(body)
            if not isinstance(payload, dict) or not isinstance(payload.get("type"), str):
                raise ValueError("body must be a JSON object with a string 'type'")
            return payload
        except (orjson.JSONDecodeError, ValueError) as exc:
            reason = f"invalid JSON: {_utf8_problem(body) or exc}"
            try:
                quarantine(
                    self.quarantine_dir, agent_id=call.agent_id, reason=reason, body=body, received_at=received_at
                )
            except OSError as os_exc:
                raise Refusal(
                    503,
                    "storage_unavailable",
                    f"could not store the body: {os_exc.strerror}",
                    reason="quarantine_failed",
                ) from os_exc
            raise Refusal(400, "invalid_json", reason) from exc

    async def data_answer(self, event: DataEvent) -> object:
        """The JSON answer to a `data` webhook. Layercode forwards it to the caller's browser as
        `response.data` (contract section 6), so the default is an empty object; a data
        responder (`LAYERCODE_DATA_RESPONDER`) may supply it. A failing responder is logged
        and answered with the default: the event is landed already."""
        if self.answer_data is None:
            return {}
        try:
            answer = self.answer_data(event, self.settings)
            if inspect.isawaitable(answer):
                answer = await answer
            orjson.dumps(answer)
            return answer
        except Exception:
            log.exception("data responder failed for session %s", event.session_id)
            return {}

    async def _stream_until_cancelled(self, receive: Receive, send: Send, produced: Any, turn_id: str) -> bool:
        """Send an async responder's items as they come, while watching for the caller's
        barge-in (Layercode tears the connection down): then the responder is stopped, since
        nobody will hear the rest. False if the reply was cancelled."""

        async def stream() -> None:
            async for item in produced:
                await send({"type": "http.response.body", "body": _sse_item(item, turn_id), "more_body": True})

        streaming = asyncio.ensure_future(stream())
        watching = asyncio.ensure_future(receive())  # answers http.disconnect when the client leaves
        try:
            await asyncio.wait((streaming, watching), return_when=asyncio.FIRST_COMPLETED)
            if not streaming.done():
                streaming.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await streaming
                return False
            streaming.result()  # the responder's own error, if it raised
            return True
        finally:
            watching.cancel()

    async def stream_reply(self, receive: Receive, send: Send, event: SessionStartEvent | MessageEvent) -> None:
        """The SSE reply: the responder's items, then `response.end` (after `response.error` if it raised).

        An async responder's items go out as they come (an LLM's sentences); a sync one's are
        all known at once and go out in one write with the end of the stream."""
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        turn_id = event.turn_id
        pending: list[bytes] = []
        try:
            produced = self.respond(event, self.settings)
            if inspect.isawaitable(produced):
                produced = await produced
            if hasattr(produced, "__aiter__"):
                if not await self._stream_until_cancelled(receive, send, produced, turn_id):
                    raise ReplyCancelled
            else:
                for item in produced:
                    pending.append(_sse_item(item, turn_id))
        except ReplyCancelled:
            raise
        except Exception as exc:  # the event is landed already; tell Layercode and close the turn
            log.exception("responder failed for session %s", event.session_id)
            pending.append(_sse(ResponseError(error=f"responder failed: {type(exc).__name__}", turn_id=turn_id)))
        pending.append(_sse(ResponseEnd(turn_id=turn_id)))
        await send({"type": "http.response.body", "body": b"".join(pending), "more_body": False})


def create_app(
    settings: Settings | None = None,
    *,
    insecure_skip_verify: bool = False,
    responder: Responder | None = None,
    data_responder: DataResponder | None = None,
) -> Router:
    settings = settings or Settings.load()
    if not settings.agent_secrets and not insecure_skip_verify:
        raise RuntimeError(
            "no webhook secret configured: set LAYERCODE_WEBHOOK_SECRET or LAYERCODE_WEBHOOK_SECRETS "
            "(or pass --insecure-skip-verify for local experiments only)"
        )
    lander, shipper, landing = choose_lander(settings)
    access_log = AccessLog()
    if data_responder is None and settings.data_responder:
        data_responder = load_data_responder(settings.data_responder)
    endpoint = WebhookEndpoint(
        settings,
        lander,
        responder or load_responder(settings.responder),
        access_log,
        insecure_skip_verify=insecure_skip_verify,
        answer_data=data_responder,
    )

    async def healthz(request: Request) -> Response:
        body = {"status": "ok", **lander.health(), "landing": landing}
        if shipper is not None:
            body["landing"] = {**landing, **shipper.health()}
        return Response(orjson.dumps(body), media_type="application/json")

    async def flush_access_log_periodically(every_s: float = 1.0) -> None:
        while True:
            await asyncio.sleep(every_s)
            access_log.flush()

    @contextlib.asynccontextmanager
    async def lifespan(app: Router) -> AsyncIterator[None]:
        if insecure_skip_verify:
            log.warning("SIGNATURE VERIFICATION IS DISABLED (--insecure-skip-verify): anyone can post events")
        if isinstance(lander, SegmentLander):
            for seg in recover_orphan_segments(settings.paths.landing):
                log.warning("sealed orphan segment %s (trimmed %d torn bytes)", seg.path, seg.trimmed_bytes)
        await lander.start()
        if shipper is not None:  # ships what a crash left behind, then keeps shipping
            await shipper.start()
        flusher = asyncio.create_task(flush_access_log_periodically())
        try:
            yield
        finally:
            flusher.cancel()
            await lander.close()
            if shipper is not None:
                await shipper.close()
            access_log.flush()

    return Router(
        routes=[
            Route("/webhook", endpoint, methods=["POST"]),
            Route("/agents/{agent_id}/webhook", endpoint, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def tune_gc_for_serving() -> None:
    """Process-wide GC settings for a process that only serves the listener.

    Each request allocates a few hundred short-lived objects (the validated event, the
    envelope, the ASGI messages) while 64 other requests are in flight, so with CPython's
    default threshold (700) generation-0 collections ran every few requests and kept
    re-scanning the in-flight ones: about a third of the listener's CPU under load
    (in-process measurement; bench/listener_bench.py shows the end result). Fewer young
    collections and freezing the start-up objects (never garbage) out of the full
    collections keeps the cycle collector for what it is for. Called by `listen` and the
    uvicorn factory, never by code that shares its process (tests, the demo).
    """
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def app_from_env() -> Router:
    """uvicorn factory: `uvicorn --factory webhook_listener.app:app_from_env --http
    webhook_listener.slow_clients:HeaderTimeoutProtocol` (what `listen --workers N` runs)."""
    tune_gc_for_serving()
    settings = Settings.load()
    HeaderTimeoutProtocol.header_timeout_s = settings.header_timeout_s  # this worker's protocol
    return create_app(settings, insecure_skip_verify=settings.insecure_skip_verify)
