"""The simulator's Layercode REST API: agents, session records and WAV recordings, with faults.

    GET /v1/agents                                               the org's agents
    GET /v1/agents/{agent_id}                                    one agent
    GET /v1/agents/{agent_id}/sessions/{session_id}              the session record
    GET /v1/agents/{agent_id}/sessions/{session_id}/recording    302 to signed storage

Bearer auth (400 without a bearer token, 401 with a wrong one, as the docs list). A
recording becomes available `processing_delay_s` after its session is registered; before
that the record says `in_progress` and the recording endpoint answers 202 with JSON. When
ready, the API redirects to a second host, the signed storage, which serves the WAV (8 or
16 kHz, PCM or mu-law, some with placeholder sizes) and refuses any request that carries an
`Authorization` header, as signed-URL object stores do. `serve()` starts both hosts.

Faults are drawn per request from a seeded generator (`faults`), or scripted per session for
tests (`script`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import random
import struct
import threading
import time
import zlib
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from layercode_pipeline.lib.wav import MU_LAW, PCM, wav_header
from layercode_pipeline.simulator.server import BackgroundServer

from .audio import encoded_audio
from .generate import SimAgent, SimBatch, SimSession

# payment_required: the org's balance ran out (402, not retryable)
# expired_url: the redirect carries a signed URL that has already expired (storage answers 403)
API_FAULTS = ("rate_limit", "server_error", "slow", "truncated_wav", "payment_required", "expired_url")


# how the signed storage misbehaves for one download (scripted per session): a body cut short,
# a header whose data size lies, a 0-byte object, or bytes dripped slowly
@functools.cache
def gzip_bomb(inflated: int = 256 * 1024 * 1024) -> bytes:
    """A gzip body of about 256 KiB that inflates to `inflated` bytes of zeros."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    return b"".join(packer.compress(zeros) for _ in range(inflated >> 20)) + packer.flush()


STORAGE_FAULTS = (
    "truncated_wav",
    "lying_header",
    "empty_wav",
    "drip",
    "absurd_rate",  # the header says 4,294,967,295 Hz
    "one_hz",  # the header says 1 Hz
    "tiny_chunks",  # 100,000 empty chunks before the data chunk
    "gzip_bomb",  # Content-Encoding: gzip, a body that inflates to 256 MiB of zeros
)
CHUNK_SAMPLES = 32 * 1024
URL_TTL_S = 300  # how long a signed storage URL stays valid


def pcm_chunks(session: SimSession, samples: int) -> AsyncIterator[bytes]:
    """The session's audio (`simulator/audio.py`) at its rate and encoding, streamed in chunks."""
    data = encoded_audio(session, samples)
    step = CHUNK_SAMPLES * session.recording_bytes_per_sample

    async def gen() -> AsyncIterator[bytes]:
        for pos in range(0, len(data), step):
            yield data[pos : pos + step]
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
    storage_url: str | None = None  # the signed-storage host recordings redirect to (`serve()` sets it)
    # `object`: {"agents": [{"id": ...}]}; `array`: a bare array of {"agent_id": ...} entries
    agents_list_shape: str = "object"

    def __post_init__(self) -> None:
        unknown = set(self.faults) - set(API_FAULTS)
        if unknown:
            raise ValueError(f"unknown API faults {sorted(unknown)}; known: {API_FAULTS}")
        self._sessions: dict[tuple[str, str], _Entry] = {}
        self._rng = random.Random(f"api-{self.seed}")
        self._lock = threading.Lock()
        self._scripts: dict[str, deque[str]] = defaultdict(deque)
        self._agents: dict[str, SimAgent] = {}
        self._storage_faults: dict[str, str] = {}  # session -> how its next storage download misbehaves
        self._url_key = hashlib.sha256(f"storage-{self.seed}-{self.api_key}".encode()).digest()
        # (kind, session_id, status; 0 = slow answer begun). kind: details / recording (the API's
        # answer, 302 when it redirects) / storage (the download itself) / agents
        self.requests: list[tuple[str, str, int]] = []
        self.app = Starlette(
            routes=[
                Route("/v1/agents", self._list_agents, methods=["GET"]),
                Route("/v1/agents/{agent_id}", self._one_agent, methods=["GET"]),
                Route("/v1/agents/{agent_id}/sessions/{session_id}", self._details, methods=["GET"]),
                Route("/v1/agents/{agent_id}/sessions/{session_id}/recording", self._recording, methods=["GET"]),
            ]
        )
        self.storage_app = Starlette(routes=[Route("/o/{agent_id}/{session_id}.wav", self._storage, methods=["GET"])])

    @contextlib.contextmanager
    def serve(self, port: int | None = None, log_level: str = "warning") -> Iterator[BackgroundServer]:
        """Serve the REST API and, on a second loopback host, its signed storage. Yields the API's
        server (REST base: `server.url + "/v1"`)."""
        storage_host = "127.0.0.2"  # a different host, as signed storage is; all of 127/8 is loopback on Linux
        try:
            storage = BackgroundServer(self.storage_app, host=storage_host, log_level=log_level).start()
        except (OSError, RuntimeError):  # a loopback with only 127.0.0.1: another port is still another origin
            storage = BackgroundServer(self.storage_app, log_level=log_level).start()
        self.storage_url = storage.url
        try:
            with BackgroundServer(self.app, port=port, log_level=log_level) as api:
                yield api
        finally:
            storage.stop()

    # --- state the simulator and tests drive -------------------------------------------
    def register(self, batch: SimBatch | list[SimSession], *, ready_in_s: float | None = None) -> None:
        sessions = batch.sessions if isinstance(batch, SimBatch) else batch
        delay = self.processing_delay_s if ready_in_s is None else ready_in_s
        agents = batch.agents if isinstance(batch, SimBatch) else [s.agent for s in sessions]
        with self._lock:
            for s in sessions:
                self._sessions[(s.agent_id, s.session_id)] = _Entry(s, time.monotonic() + delay)
            for a in agents:
                self._agents[a.agent_id] = a

    def make_ready(self, session_id: str | None = None) -> None:
        with self._lock:
            for (_, sid), entry in self._sessions.items():
                if session_id is None or sid == session_id:
                    entry.ready_at = 0.0

    def script(self, session_id: str, *outcomes: str) -> None:
        """Queue fixed answers ('rate_limit', 'rate_limit_bare' (429 without Retry-After), 'server_error',
        'slow', 'truncated_wav', 'lying_header', 'empty_wav', 'drip', 'payment_required', 'expired_url', 'ok')
        for the next requests about `session_id`, before random faults apply."""
        with self._lock:
            self._scripts[session_id].extend(outcomes)

    def count(self, kind: str | None = None, session_id: str | None = None) -> int:
        return sum(
            1 for k, s, _ in self.requests if (kind is None or k == kind) and (session_id is None or s == session_id)
        )

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
                    # the docs document no Retry-After for these endpoints: a 429 may come without it
                    return "rate_limit_bare" if name == "rate_limit" and self._rng.random() < 0.5 else name
        return None

    def _refused(self, request: Request, kind: str, key: str) -> Response | None:
        """400 without a bearer token, 401 with a wrong one (the docs list both)."""
        given = request.headers.get("authorization", "")
        if not given.startswith("Bearer "):
            self.requests.append((kind, key, 400))
            return JSONResponse({"error": "invalid_request", "message": "missing or malformed bearer token"}, 400)
        if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
            self.requests.append((kind, key, 401))
            return JSONResponse({"error": "unauthorized", "message": "invalid API key"}, 401)
        return None

    async def _pre(self, request: Request, kind: str) -> tuple[Response | None, _Entry | None, str | None]:
        agent_id, session_id = request.path_params["agent_id"], request.path_params["session_id"]
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        refused = self._refused(request, kind, session_id)
        if refused is not None:
            return refused, None, None
        fault = self._fault(session_id)
        if fault == "payment_required":
            self.requests.append((kind, session_id, 402))
            return JSONResponse({"error": "insufficient_balance", "message": "Insufficient balance"}, 402), None, None
        if fault in ("rate_limit", "rate_limit_bare"):
            retry_after = {"Retry-After": str(self.retry_after_s)} if fault == "rate_limit" else {}
            self.requests.append((kind, session_id, 429))
            return JSONResponse({"error": "rate_limited"}, 429, headers=retry_after), None, None
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
        if self.storage_url is None:
            raise RuntimeError("the recording host is not running: start the simulator with SimulatorAPI.serve()")
        if fault in STORAGE_FAULTS:
            with self._lock:
                self._storage_faults[s.session_id] = fault
        self.requests.append(("recording", s.session_id, 302))
        return Response(
            status_code=302, headers={"Location": self.signed_url(s, -1 if fault == "expired_url" else URL_TTL_S)}
        )

    def signed_url(self, s: SimSession, ttl_s: int = URL_TTL_S) -> str:
        expires = int(time.time()) + ttl_s
        return (
            f"{self.storage_url}/o/{quote(s.agent_id)}/{quote(s.session_id)}.wav"
            f"?expires={expires}&signature={self._signature(s.agent_id, s.session_id, expires)}"
        )

    def _signature(self, agent_id: str, session_id: str, expires: int) -> str:
        return hmac.new(self._url_key, f"{agent_id}/{session_id}/{expires}".encode(), "sha256").hexdigest()

    async def _storage(self, request: Request) -> Response:
        agent_id, session_id = request.path_params["agent_id"], request.path_params["session_id"]
        if "authorization" in request.headers:  # as S3 and GCS answer a signed URL that also carries a key
            self.requests.append(("storage", session_id, 400))
            return Response(
                "<Error><Code>InvalidArgument</Code><Message>Only one auth mechanism allowed</Message></Error>",
                400,
                media_type="application/xml",
            )
        try:
            expires = int(request.query_params.get("expires", ""))
        except ValueError:
            expires = 0
        given = request.query_params.get("signature", "")
        if expires < time.time() or not hmac.compare_digest(given, self._signature(agent_id, session_id, expires)):
            self.requests.append(("storage", session_id, 403))
            return Response("<Error><Code>AccessDenied</Code></Error>", 403, media_type="application/xml")
        entry = self._sessions.get((agent_id, session_id))
        if entry is None:
            self.requests.append(("storage", session_id, 404))
            return Response("<Error><Code>NoSuchKey</Code></Error>", 404, media_type="application/xml")
        s = entry.session
        header = wav_header(
            s.recording_data_bytes,
            s.sample_rate,
            bits=8 * s.recording_bytes_per_sample,
            format_tag=MU_LAW if s.wav_format == "mulaw" else PCM,
            placeholder=s.wav_placeholder,
        )
        samples = s.recording_samples
        with self._lock:
            fault = self._storage_faults.pop(s.session_id, None)
        if fault == "truncated_wav":  # the connection's body ends early; Content-Length still claims it all
            samples = samples // 3
        elif fault == "lying_header":  # the data chunk claims ten times the samples the file holds
            header = header[:-4] + struct.pack("<I", s.recording_data_bytes * 10)
        elif fault == "empty_wav":  # the store holds a 0-byte object
            self.requests.append(("storage", s.session_id, 200))
            return Response(b"", 200, media_type="audio/wav")
        elif fault in ("absurd_rate", "one_hz"):  # the fmt chunk's sample rate (and byte rate)
            rate = 0xFFFFFFFF if fault == "absurd_rate" else 1
            header = header[:24] + struct.pack("<II", rate, rate) + header[32:]
        elif fault == "tiny_chunks":  # a valid file, with a walk of 100,000 chunks to reach its samples
            junk = b"junk" + struct.pack("<I", 2) + b"\0\0"
            header = header[:4] + struct.pack("<I", 36 + 1_000_000 + s.recording_data_bytes) + header[8:]
            header = header[:36] + junk * 100_000 + header[36:]
        elif fault == "gzip_bomb":
            self.requests.append(("storage", s.session_id, 200))
            return Response(gzip_bomb(), 200, media_type="audio/wav", headers={"content-encoding": "gzip"})
        self.requests.append(("storage", s.session_id, 200))
        pcm = pcm_chunks(s, samples)

        async def body() -> AsyncIterator[bytes]:
            yield header
            async for chunk in pcm:
                if fault == "drip":  # a host that sends a few bytes at a time, never stalling long enough to time out
                    for pos in range(0, len(chunk), 512):
                        yield chunk[pos : pos + 512]
                        await asyncio.sleep(0.2)
                else:
                    yield chunk

        return StreamingResponse(
            body(), media_type="audio/wav", headers={"Content-Length": str(len(header) + s.recording_data_bytes)}
        )

    async def _list_agents(self, request: Request) -> Response:
        refused = self._refused(request, "agents", "")
        if refused is not None:
            return refused
        self.requests.append(("agents", "", 200))
        listed = [a.api_record() for a in self._agents.values()]
        if self.agents_list_shape == "array":  # as some API versions answer (contract section 6)
            return JSONResponse([{"agent_id": a.pop("id"), **a} for a in listed])
        return JSONResponse({"agents": listed})

    async def _one_agent(self, request: Request) -> Response:
        agent_id = request.path_params["agent_id"]
        refused = self._refused(request, "agents", agent_id)
        if refused is not None:
            return refused
        agent = self._agents.get(agent_id)
        if agent is None:
            self.requests.append(("agents", agent_id, 404))
            return JSONResponse({"error": "not_found", "message": "agent not found"}, 404)
        self.requests.append(("agents", agent_id, 200))
        return JSONResponse(agent.detail_record())
