"""The ASGI app: `POST /webhook`, `POST /agents/{agent_id}/webhook`, `GET /healthz`.

Order of work per request, chosen so nothing is acknowledged before it is durable:
size limit -> signature over the raw bytes -> JSON -> model validation -> land (fsync)
-> status line (SSE or JSON). Every refusal answers JSON `{"error": code, "detail": ...}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from layercode_pipeline.config import Settings
from layercode_pipeline.contract.events import (
    SSE_EVENT_TYPES,
    MessageEvent,
    ResponseData,
    ResponseEnd,
    ResponseError,
    ResponseTTS,
    SessionStartEvent,
    parse_event_json,
    validation_reason,
)
from layercode_pipeline.contract.landing import build_envelope, fsync_dir
from layercode_pipeline.contract.signing import SIGNATURE_HEADER, SignatureError, verify_signature

from .lander import SegmentLander
from .responder import Data, Responder, load_responder

log = logging.getLogger("webhook_listener")
# One JSON line per request. Kept off the hot path: `layercode-pipeline listen` buffers this
# logger's lines and writes them in batches (see cli.configure_access_log).
access_logger = logging.getLogger("webhook_listener.access")

SSE_HEADERS = {"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"}


class BodyTooLarge(Exception):
    pass


def _json(content: object, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


def _refuse(status: int, code: str, detail: str) -> Response:
    return _json({"error": code, "detail": detail}, status)


def _sse(event: object) -> bytes:
    return b"data: " + orjson.dumps(event.model_dump()) + b"\n\n"  # type: ignore[attr-defined]


async def _read_body(request: Request, limit: int) -> bytes:
    """Read at most `limit` bytes; refuse early on Content-Length, else while streaming."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit():
        if int(declared) > limit:
            raise BodyTooLarge(f"Content-Length {declared} exceeds {limit} bytes")
        return await request.body()  # the server stops at Content-Length: bounded
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def quarantine(quarantine_dir: Path, *, agent_id: str, reason: str, body: bytes, received_at: datetime) -> Path:
    """Keep a signed but unusable body, byte for byte, with why it was refused."""
    day = quarantine_dir / f"dt={received_at:%Y-%m-%d}"
    day.mkdir(parents=True, exist_ok=True)
    stem = f"{received_at:%H%M%S}-{uuid.uuid4().hex}"
    meta = orjson.dumps({"received_at": received_at.isoformat(), "agent_id": agent_id, "reason": reason,
                         "content_sha256": hashlib.sha256(body).hexdigest(), "bytes": len(body)})
    for name, data in ((f"{stem}.body", body), (f"{stem}.meta.json", meta)):
        fd = os.open(day / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    fsync_dir(day)
    return day / f"{stem}.body"


def create_app(settings: Settings | None = None, *, insecure_skip_verify: bool = False,
               responder: Responder | None = None) -> Starlette:
    settings = settings or Settings()
    secrets = settings.agent_secrets
    if not secrets and not insecure_skip_verify:
        raise RuntimeError(
            "no webhook secret configured: set LAYERCODE_WEBHOOK_SECRET or LAYERCODE_WEBHOOK_SECRETS "
            "(or pass --insecure-skip-verify for local experiments only)")
    respond = responder or load_responder(settings.responder)
    lander = SegmentLander(settings.paths.landing, max_bytes=settings.segment_max_bytes,
                           max_age_s=settings.segment_max_age_s)
    quarantine_dir = settings.paths.quarantine

    def access_log(started: float, agent_id: str, event_type: str | None, session_id: str | None,
                   status: int, error: str | None = None) -> None:
        if not access_logger.isEnabledFor(logging.INFO):
            return
        access_logger.info(orjson.dumps({
            "ts": time.time(), "agent_id": agent_id, "type": event_type, "session_id": session_id,
            "status": status, "latency_ms": round((time.perf_counter() - started) * 1000, 2), "error": error,
        }).decode())

    async def stream_reply(event: SessionStartEvent | MessageEvent) -> AsyncIterator[bytes]:
        turn_id = event.turn_id
        try:
            produced = respond(event, settings)
            if inspect.isawaitable(produced):
                produced = await produced
            if hasattr(produced, "__aiter__"):
                async for item in produced:  # type: ignore[union-attr]
                    yield _sse(ResponseData(content=item.content, turn_id=turn_id) if isinstance(item, Data)
                               else ResponseTTS(content=str(item), turn_id=turn_id))
            else:
                for item in produced:  # type: ignore[union-attr]
                    yield _sse(ResponseData(content=item.content, turn_id=turn_id) if isinstance(item, Data)
                               else ResponseTTS(content=str(item), turn_id=turn_id))
        except Exception as exc:  # the event is landed already; tell Layercode and close the turn
            log.exception("responder failed for session %s", event.session_id)
            yield _sse(ResponseError(error=f"responder failed: {type(exc).__name__}", turn_id=turn_id))
        yield _sse(ResponseEnd(turn_id=turn_id))

    async def webhook(request: Request) -> Response:
        started = time.perf_counter()
        agent_id = request.path_params.get("agent_id", settings.agent_id)
        agent_secrets = secrets.get(agent_id)
        if agent_secrets is None and not insecure_skip_verify:
            access_log(started, agent_id, None, None, 401, "unknown_agent")
            return _refuse(401, "unknown_agent", f"no webhook secret configured for agent {agent_id!r}")
        try:
            body = await _read_body(request, settings.max_body_bytes)
        except BodyTooLarge as exc:
            access_log(started, agent_id, None, None, 413, "body_too_large")
            return _refuse(413, "body_too_large", str(exc))
        except ClientDisconnect:
            return Response(status_code=400)
        if not insecure_skip_verify:
            try:
                verify_signature(body, request.headers.get(SIGNATURE_HEADER), agent_secrets or (),
                                 tolerance_s=settings.signature_tolerance_s)
            except SignatureError as exc:
                access_log(started, agent_id, None, None, 401, exc.reason)
                return _refuse(401, exc.reason, exc.detail)

        received_at = datetime.now(UTC)
        try:
            payload = orjson.loads(body)
            if not isinstance(payload, dict) or not isinstance(payload.get("type"), str):
                raise ValueError("body must be a JSON object with a string 'type'")
            body.decode("utf-8")
        except (orjson.JSONDecodeError, ValueError) as exc:
            reason = f"invalid JSON: {exc}"
            try:
                quarantine(quarantine_dir, agent_id=agent_id, reason=reason, body=body, received_at=received_at)
            except OSError as os_exc:
                access_log(started, agent_id, None, None, 503, "quarantine_failed")
                return _refuse(503, "storage_unavailable", f"could not store the body: {os_exc.strerror}")
            access_log(started, agent_id, None, None, 400, "invalid_json")
            return _refuse(400, "invalid_json", reason)

        event_type: str = payload["type"]
        session_id = payload.get("session_id") if isinstance(payload.get("session_id"), str) else None
        error: str | None = None
        event = None
        try:
            event = parse_event_json(body, event_type)  # None for a type we do not know: kept as is
        except ValidationError as exc:
            error = validation_reason(exc)

        line = build_envelope(received_at=received_at, agent_id=agent_id, event_type=event_type,
                              content_sha256=hashlib.sha256(body).hexdigest(), body=body,
                              headers=request.scope["headers"], writer_id=lander.writer_id, error=error)
        try:
            await lander.land(line, received_at)
        except OSError as exc:
            access_log(started, agent_id, event_type, session_id, 503, "landing_failed")
            return _refuse(503, "storage_unavailable", f"event not stored, retry later: {exc.strerror or exc}")

        if error is not None:  # kept, but we cannot answer it as the type requires
            access_log(started, agent_id, event_type, session_id, 422, "invalid_event")
            return _refuse(422, "invalid_event", error)
        if event_type in SSE_EVENT_TYPES:
            access_log(started, agent_id, event_type, session_id, 200)
            return StreamingResponse(stream_reply(event), media_type="text/event-stream",  # type: ignore[arg-type]
                                     headers=SSE_HEADERS)
        access_log(started, agent_id, event_type, session_id, 200)
        return _json({"status": "ok", "type": event_type})

    async def healthz(request: Request) -> Response:
        return _json({"status": "ok", "writer_id": lander.writer_id, "landed": lander.landed,
                      "fsync_groups": lander.groups})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        from layercode_pipeline.contract.landing import recover_orphan_segments

        if insecure_skip_verify:
            log.warning("SIGNATURE VERIFICATION IS DISABLED (--insecure-skip-verify): anyone can post events")
        for seg in recover_orphan_segments(settings.paths.landing):
            log.warning("sealed orphan segment %s (trimmed %d torn bytes)", seg.path, seg.trimmed_bytes)
        await lander.start()
        flusher = asyncio.create_task(_flush_logs_periodically())
        try:
            yield
        finally:
            flusher.cancel()
            await lander.close()
            _flush_access_log()

    app = Starlette(routes=[
        Route("/webhook", webhook, methods=["POST"]),
        Route("/agents/{agent_id}/webhook", webhook, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ], lifespan=lifespan)
    app.state.lander = lander
    return app


def _flush_access_log() -> None:
    for handler in access_logger.handlers:
        handler.flush()


async def _flush_logs_periodically(every_s: float = 1.0) -> None:
    while True:
        await asyncio.sleep(every_s)
        _flush_access_log()


def app_from_env() -> Starlette:
    """uvicorn factory: `uvicorn --factory webhook_listener.app:app_from_env`."""
    return create_app(Settings(), insecure_skip_verify=os.environ.get("LAYERCODE_INSECURE_SKIP_VERIFY") == "1")
