"""The simulator's Layercode REST API: session records and WAV recordings, with faults.

    GET /v1/agents/{agent_id}/sessions/{session_id}
    GET /v1/agents/{agent_id}/sessions/{session_id}/recording

Bearer auth. A recording becomes available `processing_delay_s` after its session is
registered; before that the record says `in_progress` and the recording endpoint answers
202 with JSON. Faults are drawn per request from a seeded generator (`faults`), or
scripted per session for tests (`script`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import random
import struct
import threading
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from layercode_pipeline.lib.wav import wav_header

from .generate import SAMPLE_RATE, SimBatch, SimSession

API_FAULTS = ("rate_limit", "server_error", "slow", "truncated_wav")
CHUNK_SAMPLES = 32 * 1024


def pcm_chunks(session_id: str, samples: int) -> AsyncIterator[bytes]:
    """A deterministic tone per session, 16-bit little-endian mono, streamed in chunks."""
    freq = 200 + int(hashlib.sha256(session_id.encode()).hexdigest()[:4], 16) % 600
    period = max(2, SAMPLE_RATE // freq)
    # a triangle wave: cheap to synthesise without numpy, and clearly not silence
    wave = [int(8000 * (1 - abs(2 * i / period - 1)) - 4000) for i in range(period)]
    block = struct.pack(f"<{period}h", *wave)
    reps = CHUNK_SAMPLES // period
    chunk = block * reps

    async def gen() -> AsyncIterator[bytes]:
        remaining = samples * 2
        while remaining > 0:
            piece = chunk if remaining >= len(chunk) else chunk[:remaining]
            remaining -= len(piece)
            yield piece
            await asyncio.sleep(0)

    return gen()


@dataclass
class _Entry:
    session: SimSession
    ready_at: float


@dataclass
class SimulatorAPI:
    api_key: str
    seed: int = 0
    processing_delay_s: float = 0.0
    faults: dict[str, float] = field(default_factory=dict)
    retry_after_s: int = 1
    slow_s: float = 5.0
    latency_s: float = 0.0  # added to every answer: the round trip to a real API

    def __post_init__(self) -> None:
        unknown = set(self.faults) - set(API_FAULTS)
        if unknown:
            raise ValueError(f"unknown API faults {sorted(unknown)}; known: {API_FAULTS}")
        self._sessions: dict[tuple[str, str], _Entry] = {}
        self._rng = random.Random(f"api-{self.seed}")
        self._lock = threading.Lock()
        self._scripts: dict[str, deque[str]] = defaultdict(deque)
        self.requests: list[tuple[str, str, int]] = []  # (kind, session_id, status; 0 = slow answer begun)
        self.app = Starlette(routes=[
            Route("/v1/agents/{agent_id}/sessions/{session_id}", self._details, methods=["GET"]),
            Route("/v1/agents/{agent_id}/sessions/{session_id}/recording", self._recording, methods=["GET"]),
        ])

    # --- state the simulator and tests drive -------------------------------------------
    def register(self, batch: SimBatch | list[SimSession], *, ready_in_s: float | None = None) -> None:
        sessions = batch.sessions if isinstance(batch, SimBatch) else batch
        delay = self.processing_delay_s if ready_in_s is None else ready_in_s
        with self._lock:
            for s in sessions:
                self._sessions[(s.agent_id, s.session_id)] = _Entry(s, time.monotonic() + delay)

    def make_ready(self, session_id: str | None = None) -> None:
        with self._lock:
            for (_, sid), entry in self._sessions.items():
                if session_id is None or sid == session_id:
                    entry.ready_at = 0.0

    def script(self, session_id: str, *outcomes: str) -> None:
        """Queue fixed answers ('rate_limit', 'server_error', 'slow', 'truncated_wav', 'ok')
        for the next requests about `session_id`, before random faults apply."""
        with self._lock:
            self._scripts[session_id].extend(outcomes)

    def count(self, kind: str | None = None, session_id: str | None = None) -> int:
        return sum(1 for k, s, _ in self.requests if (kind is None or k == kind) and (session_id is None or s == session_id))

    # --- request handling ----------------------------------------------------------------
    def _fault(self, session_id: str) -> str | None:
        with self._lock:
            queue = self._scripts.get(session_id)
            if queue:
                outcome = queue.popleft()
                return None if outcome == "ok" else outcome
            for name in API_FAULTS:
                rate = self.faults.get(name, 0.0)
                if rate and self._rng.random() < rate:
                    return name
        return None

    def _authorised(self, request: Request) -> bool:
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode())

    async def _pre(self, request: Request, kind: str) -> tuple[Response | None, _Entry | None, str | None]:
        agent_id, session_id = request.path_params["agent_id"], request.path_params["session_id"]
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if not self._authorised(request):
            self.requests.append((kind, session_id, 401))
            return JSONResponse({"error": "unauthorized", "message": "invalid API key"}, 401), None, None
        fault = self._fault(session_id)
        if fault == "rate_limit":
            self.requests.append((kind, session_id, 429))
            return JSONResponse({"error": "rate_limited"}, 429, headers={"Retry-After": str(self.retry_after_s)}), None, None
        if fault == "server_error":
            self.requests.append((kind, session_id, 500))
            return JSONResponse({"error": "internal_error"}, 500), None, None
        if fault == "slow":
            self.requests.append((kind, session_id, 0))  # 0: answered late (the client may have given up)
            await asyncio.sleep(self.slow_s)
        entry = self._sessions.get((agent_id, session_id))
        if entry is None:
            self.requests.append((kind, session_id, 404))
            return JSONResponse({"error": "not_found", "message": "session not found"}, 404), None, None
        return None, entry, fault

    async def _details(self, request: Request) -> Response:
        refused, entry, _ = await self._pre(request, "details")
        if refused is not None:
            return refused
        assert entry is not None
        self.requests.append(("details", entry.session.session_id, 200))
        return JSONResponse(entry.session.rest_record(recording_ready=time.monotonic() >= entry.ready_at))

    async def _recording(self, request: Request) -> Response:
        refused, entry, fault = await self._pre(request, "recording")
        if refused is not None:
            return refused
        assert entry is not None
        s = entry.session
        if s.recording_outcome != "completed":
            self.requests.append(("recording", s.session_id, 404))
            return JSONResponse({"error": "not_found", "message": "no recording for this session"}, 404)
        if time.monotonic() < entry.ready_at:
            self.requests.append(("recording", s.session_id, 202))
            return JSONResponse({"recording_status": "in_progress"}, 202)
        data_bytes = s.recording_samples * 2
        header = wav_header(data_bytes, SAMPLE_RATE)
        samples = s.recording_samples
        if fault == "truncated_wav":  # the connection's body ends early; the header still claims it all
            samples = samples // 3
        self.requests.append(("recording", s.session_id, 200))
        pcm = pcm_chunks(s.session_id, samples)

        async def body() -> AsyncIterator[bytes]:
            yield header
            async for chunk in pcm:
                yield chunk

        return StreamingResponse(body(), media_type="audio/wav",
                                 headers={"Content-Length": str(len(header) + samples * 2)})
