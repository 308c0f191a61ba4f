"""The one Layercode REST client (contract section 3).

httpx with explicit timeouts, a concurrency limit, and tenacity retries (exponential
backoff with jitter, or the server's `Retry-After`) on 429, 5xx, timeouts and dropped
connections. 401 fails fast; 404 is an answer. The API key only ever travels in the
Authorization header: it is not in URLs, messages, logs or `repr`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import os
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from layercode_pipeline.config import DEFAULT_API_BASE_URL, Settings
from layercode_pipeline.lib.wav import InvalidWav, WavInfo, read_wav_info


class LayercodeAPIError(RuntimeError):
    pass


class LayercodeAuthError(LayercodeAPIError):
    """400/401/402/403: the key, the org or its balance must be fixed. Retrying will not help,
    and every other call of the run would fail the same way, so the run stops at once."""


# What to fix for each answer that no retry can change (contract section 5).
FATAL_STATUS = {
    400: "Layercode API answered 400 Bad Request (an invalid or missing bearer token): check LAYERCODE_API_KEY",
    401: "Layercode API answered 401 Unauthorized: check LAYERCODE_API_KEY and that the key's org owns the agent",
    402: "Layercode API answered 402 Payment Required: the org's balance is insufficient; top it up in the "
    "Layercode dashboard",
    403: "Layercode API answered 403 Forbidden: the key may not read this agent's sessions; use an org key of "
    "the org that owns the agent",
}


class RetryableHTTPError(LayercodeAPIError):
    def __init__(self, status: int, retry_after: float | None):
        super().__init__(f"HTTP {status}" + (f" (Retry-After {retry_after:g} s)" if retry_after is not None else ""))
        self.status = status
        self.retry_after = retry_after


RETRYABLE = (RetryableHTTPError, httpx.TimeoutException, httpx.TransportError, InvalidWav)


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port


def _agent_id(entry: dict[str, Any]) -> str | None:
    for key in ("id", "agent_id"):
        if isinstance(entry.get(key), str) and entry[key]:
            return entry[key]
    return None


def _with_agent_id(entry: dict[str, Any]) -> dict[str, Any]:
    return {**entry, "id": _agent_id(entry)}


class RefusedRedirect(LayercodeAPIError):
    """A recording redirect to an address the pipeline must not fetch from."""


async def _is_private_host(host: str) -> bool:
    """Whether `host` is, or resolves to, a loopback, link-local, private or otherwise
    non-public address (any of its addresses: a name may resolve to several)."""
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, None)
        except OSError:
            return False  # unresolvable: the request itself fails with a clear error
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    return any(not a.is_global for a in addresses)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


class _WaitRetryAfter:
    """The server's Retry-After when it gives one (capped), else exponential backoff with jitter."""

    def __init__(self, initial: float, maximum: float):
        self.backoff = wait_exponential_jitter(initial=initial, max=maximum)
        self.maximum = maximum

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RetryableHTTPError) and exc.retry_after is not None:
            return min(exc.retry_after, self.maximum)
        return self.backoff(state)


@dataclass
class SessionFetch:
    agent_id: str
    session_id: str
    status: int  # 200 or 404
    record: dict[str, Any] | None


@dataclass
class RecordingDownload:
    status: str  # downloaded / not_ready / not_found
    path: Path | None = None
    bytes: int = 0
    sha256: str | None = None
    wav: WavInfo | None = None
    detail: str | None = None


CHUNK_BYTES = 256 * 1024


async def _bounded_chunks(response: httpx.Response) -> AsyncIterator[bytes]:
    """The body, decoded, at most CHUNK_BYTES at a time. httpx inflates each network read whole
    before chunking it: a gzip body of zeros cost about 2 GB of memory per MiB on the wire. Here
    the raw bytes are inflated with a bounded output per step, so the size cap applies as the
    file grows, with constant memory; an encoding other than gzip or deflate is refused."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        async for chunk in response.aiter_raw(CHUNK_BYTES):
            yield chunk
        return
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise InvalidWav(f"the recording was sent with Content-Encoding {encoding!r}, which is not decoded here")
    inflater = zlib.decompressobj(47 if "gzip" in encoding else zlib.MAX_WBITS)
    async for raw in response.aiter_raw(CHUNK_BYTES):
        data = raw
        while data:
            try:
                out = inflater.decompress(data, CHUNK_BYTES)
            except zlib.error as exc:
                raise InvalidWav(f"the recording's {encoding} encoding is corrupt: {exc}") from None
            if out:
                yield out
            data = inflater.unconsumed_tail
            if not out and not data:
                break
    tail = inflater.flush()
    if tail:
        yield tail


def _too_large(size: int, max_bytes: int) -> str:
    return f"the recording is over LAYERCODE_RECORDING_MAX_BYTES ({size:,} > {max_bytes:,} bytes): not kept"


class LayercodeClient:
    def __init__(
        self,
        api_key: str,
        base_url: str = DEFAULT_API_BASE_URL,
        *,
        timeout_s: float = Settings.default("api_timeout_s"),
        max_concurrency: int = Settings.default("api_max_concurrency"),
        max_attempts: int = Settings.default("api_max_attempts"),
        backoff_initial_s: float = Settings.default("api_backoff_initial_s"),
        backoff_max_s: float = Settings.default("api_backoff_max_s"),
        private_redirects: bool | None = Settings.default("recording_private_redirects"),
    ):
        if not api_key:
            raise LayercodeAuthError("no Layercode API key configured (set LAYERCODE_API_KEY)")
        self._api_key = api_key
        self.base_url = base_url.rstrip("/")
        self.timeout = httpx.Timeout(timeout_s, connect=min(10.0, timeout_s))
        self.max_concurrency = max_concurrency
        self.max_attempts = max_attempts
        self._wait = _WaitRetryAfter(backoff_initial_s, backoff_max_s)
        # None: a redirect may reach a private address only when the API itself is on one
        # (the simulator, a proxy on the same network); Layercode's public API never needs it
        self.private_redirects = private_redirects
        self._sem: asyncio.Semaphore | None = None
        self._client: httpx.AsyncClient | None = None

    def __repr__(self) -> str:
        return f"LayercodeClient(base_url={self.base_url!r}, api_key='***')"

    async def __aenter__(self) -> LayercodeClient:
        self._sem = asyncio.Semaphore(self.max_concurrency)
        api_origin = _origin(httpx.URL(self.base_url))
        if self.private_redirects is None:
            self.private_redirects = await _is_private_host(api_origin[1])

        async def refuse_private_hops(request: httpx.Request) -> None:
            """Every request leaving the API's origin (a redirect hop) is checked before it is sent."""
            if (
                _origin(request.url) != api_origin
                and not self.private_redirects
                and await _is_private_host(request.url.host)
            ):
                raise RefusedRedirect(
                    f"refused a redirect to {request.url.host}, a loopback, link-local or private "
                    "address (set LAYERCODE_RECORDING_PRIVATE_REDIRECTS=true to allow it)"
                )

        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=self.timeout,
            headers={"Authorization": f"Bearer {self._api_key}"},
            limits=httpx.Limits(max_connections=self.max_concurrency),
            event_hooks={"request": [refuse_private_hops]},
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._client is not None
        await self._client.aclose()

    def _retrying(self) -> AsyncRetrying:
        return AsyncRetrying(
            retry=retry_if_exception_type(RETRYABLE),
            wait=self._wait,
            stop=stop_after_attempt(self.max_attempts),
            reraise=True,
        )

    @staticmethod
    def session_path(agent_id: str, session_id: str) -> str:
        # ids are quoted as single path segments: a hostile id cannot walk the API's tree
        return f"/agents/{quote(agent_id, safe='')}/sessions/{quote(session_id, safe='')}"

    @staticmethod
    def _check(response: httpx.Response) -> None:
        if response.status_code in FATAL_STATUS:
            raise LayercodeAuthError(FATAL_STATUS[response.status_code])
        if response.status_code == 429 or response.status_code >= 500:
            raise RetryableHTTPError(response.status_code, _retry_after(response))

    async def _get_json(self, path: str, what: str) -> Any:
        """A GET answered 200 with JSON (404: None), after the client's retries."""
        assert self._client is not None and self._sem is not None, "use 'async with LayercodeClient(...)'"
        async with self._sem:
            async for attempt in self._retrying():
                with attempt:
                    response = await self._client.get(path)
                    self._check(response)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise LayercodeAPIError(f"unexpected HTTP {response.status_code} for {what}")
        try:
            return response.json()
        except ValueError as exc:
            raise LayercodeAPIError(f"{what} is not JSON") from exc

    async def list_agents(self) -> list[dict[str, Any]]:
        """`GET /v1/agents`: the org's agents (id, name, type, phone numbers), as they came, each
        with its id under `id`. The list may be `{"agents": [...]}` or a bare array, and an
        entry's id `id` or `agent_id` (contract section 6: community clients handle both)."""
        answer = await self._get_json("/agents", "the agents list")
        agents = answer.get("agents") if isinstance(answer, dict) else answer
        if not isinstance(agents, list):
            raise LayercodeAPIError("the agents list is neither an array nor an object with an 'agents' array")
        return [_with_agent_id(a) for a in agents if isinstance(a, dict) and _agent_id(a) is not None]

    async def get_agent(self, agent_id: str) -> dict[str, Any] | None:
        """`GET /v1/agents/{id}`: one agent with its configuration (its backend plugin: the
        customer's `agent.webhook` or Layercode's hosted `agent.llm`); None when not found."""
        answer = await self._get_json(f"/agents/{quote(agent_id, safe='')}", "an agent record")
        if answer is None:
            return None
        if isinstance(answer, dict) and isinstance(answer.get("agent"), dict):
            answer = answer["agent"]
        if not isinstance(answer, dict):
            raise LayercodeAPIError("an agent record is not a JSON object")
        return _with_agent_id({"id": agent_id, **answer})

    async def get_session(self, agent_id: str, session_id: str) -> SessionFetch:
        assert self._client is not None and self._sem is not None, "use 'async with LayercodeClient(...)'"
        async with self._sem:
            async for attempt in self._retrying():
                with attempt:
                    response = await self._client.get(self.session_path(agent_id, session_id))
                    self._check(response)
        if response.status_code == 404:
            return SessionFetch(agent_id, session_id, 404, None)
        if response.status_code != 200:
            raise LayercodeAPIError(f"unexpected HTTP {response.status_code} for a session record")
        try:
            record = response.json()
        except ValueError as exc:
            raise LayercodeAPIError("session record is not JSON") from exc
        return SessionFetch(agent_id, session_id, 200, record)

    async def download_recording(
        self,
        agent_id: str,
        session_id: str,
        dest: Path,
        *,
        max_bytes: int | None = None,
        deadline_s: float | None = None,
    ) -> RecordingDownload:
        """Stream the WAV to a temporary file beside `dest`; keep it only if it is a complete
        RIFF/WAVE file whose header agrees with its size, then rename it into place.

        A file over `max_bytes` (announced, or as it streams) is refused without retrying. The
        whole download, retries included, must finish within `deadline_s` once it starts: a
        host that drips bytes gets an error for this recording, not a stuck run."""
        assert self._client is not None and self._sem is not None, "use 'async with LayercodeClient(...)'"
        async with self._sem:
            try:
                async with asyncio.timeout(deadline_s):
                    async for attempt in self._retrying():
                        with attempt:
                            result = await self._download_once(agent_id, session_id, dest, max_bytes)
            except TimeoutError:
                return RecordingDownload("error", detail=f"not downloaded within the {deadline_s:g} s deadline")
        return result

    @staticmethod
    async def _storage_refusal(response: httpx.Response) -> RecordingDownload:
        """A non-200 after a redirect left the API's origin: the answer of signed storage (or of
        whatever it redirected to), not the API's, so not an API-key problem. 403 (an expired
        signature), 429 and 5xx are retried (the next attempt gets a freshly signed URL);
        anything else is this recording's error. The answer's body is read and dropped, never
        stored or logged: it may echo the signed URL or the storage account's details."""
        await response.aread()
        if response.status_code in (403, 429) or response.status_code >= 500:
            raise RetryableHTTPError(response.status_code, _retry_after(response))
        return RecordingDownload(
            "error", detail=f"redirected recording host {response.url.host} answered HTTP {response.status_code}"
        )

    async def _download_once(
        self, agent_id: str, session_id: str, dest: Path, max_bytes: int | None = None
    ) -> RecordingDownload:
        assert self._client is not None
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{id(dest):x}.part")
        try:
            # The WAV may be served from signed storage on another host (the docs' example is
            # `curl -L`): follow redirects. httpx drops the Authorization header when a redirect
            # leaves the API's origin, so the key never reaches that host.
            async with contextlib.AsyncExitStack() as stack:
                try:
                    response = await stack.enter_async_context(
                        self._client.stream(
                            "GET",
                            self.session_path(agent_id, session_id) + "/recording",
                            follow_redirects=True,
                            # a WAV is sent as it is; a host that compresses it anyway is decoded
                            # a bounded piece at a time (see _bounded_chunks)
                            headers={"accept-encoding": "identity"},
                        )
                    )
                except RefusedRedirect as exc:  # this recording's error; the run goes on
                    return RecordingDownload("error", detail=str(exc))
                # judged by every hop, not the last: a chain that returns to the API's origin
                # arrives there without the key (dropped when it left), and its 401 is no
                # reason to suspect LAYERCODE_API_KEY
                api_origin = _origin(self._client.base_url)
                left_api = any(_origin(hop.url) != api_origin for hop in (*response.history, response))
                if left_api and response.status_code != 200:
                    return await self._storage_refusal(response)
                self._check(response)
                ctype = response.headers.get("content-type", "")
                if response.status_code == 404:
                    await response.aread()
                    return RecordingDownload("not_found", detail="no recording for this session (404)")
                if response.status_code != 200 or "json" in ctype:
                    await response.aread()
                    return RecordingDownload("not_ready", detail=f"HTTP {response.status_code} {ctype or ''}".strip())
                announced = response.headers.get("content-length", "")
                if max_bytes is not None and announced.isdigit() and int(announced) > max_bytes:
                    await response.aclose()
                    return RecordingDownload("error", detail=_too_large(int(announced), max_bytes))
                digest = hashlib.sha256()
                size = 0
                with tmp.open("wb") as fh:
                    try:
                        async for chunk in _bounded_chunks(response):
                            fh.write(chunk)
                            digest.update(chunk)
                            size += len(chunk)
                            if max_bytes is not None and size > max_bytes:
                                await response.aclose()
                                return RecordingDownload("error", detail=_too_large(size, max_bytes))
                    except httpx.RemoteProtocolError as exc:  # the body ended before Content-Length
                        expected = response.headers.get("content-length", "?")
                        raise InvalidWav(f"truncated download: {size} of {expected} bytes received") from exc
                    fh.flush()
                    os.fsync(fh.fileno())
            with tmp.open("rb") as fh:
                info = read_wav_info(fh, size)  # raises InvalidWav: retried, then reported
            os.replace(tmp, dest)
            return RecordingDownload("downloaded", dest, size, digest.hexdigest(), info)
        finally:
            if tmp.exists():
                tmp.unlink()
