"""The landing file format: the contract between the listener and the ingest.

    <landing>/dt=YYYY-MM-DD/hour=HH/<writer id>-<seq>.jsonl        sealed, read by ingest
    <landing>/dt=YYYY-MM-DD/hour=HH/<writer id>-<seq>.jsonl.open   being written

One JSON envelope per line (see `build_envelope`). A segment is written under its
`.open` name while its writer holds an exclusive `flock` on it, and sealed by an atomic
rename. This module is the format and the names; reading, listing and recovering landed
files is `layercode_pipeline.landing`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path

import orjson

ENVELOPE_VERSION = 1
SEALED_SUFFIX = ".jsonl"
OPEN_SUFFIX = ".jsonl.open"
# Request headers kept by default: the client and tracing headers only. Layercode appends the
# customer's custom headers (`x-tenant-id`, ...) to each webhook; they are free-form and may
# identify a person, so each is kept only when named (LAYERCODE_KEPT_HEADERS).
DEFAULT_KEPT_HEADERS = ("user-agent", "content-type", "traceparent")
# Headers carrying the caller's (or a proxy's) IP address: kept only when named exactly, never
# through a prefix such as `x-*`.
IP_HEADERS = frozenset({"x-forwarded-for", "x-real-ip", "forwarded", "cf-connecting-ip", "true-client-ip"})
# Credentials and credential-derived values, never kept whatever the allow-list says.
NEVER_KEPT_HEADERS = frozenset(
    {
        "layercode-signature",
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "x-amz-security-token",
    }
)


# Layercode's custom headers are free-form (contract section 6) and may carry the customer's own
# credentials for its backend: a name that suggests one is never kept either, whatever pattern
# (`x-*`) admitted it: the words anywhere in the name, and the short forms (`x-pwd`, `x-pin`,
# `x-sid`, `x-otp`) as a whole part of it.
CREDENTIAL_NAME = re.compile(
    r"auth|token|secret|passw|passphrase|passcode|pwd|key|cookie|signature|credential|bearer|jwt|private"
    r"|(?:^|[-_.])(?:pw|pass|pin|otp|sid|sig|cred|nonce|hmac)(?:[-_.]|$)"
)


def header_allow_list(patterns: Iterable[str]) -> Callable[[bytes], bool]:
    """A predicate on raw (lower-case) header names: exact names, or prefixes ending in `*`.
    Answers are cached per name: the listener asks for every header of every request."""
    exact = {p.lower() for p in patterns if not p.endswith("*")}
    prefixes = tuple(p.lower()[:-1] for p in patterns if p.endswith("*"))

    @functools.lru_cache(maxsize=1024)
    def keep(name: bytes) -> bool:
        text = name.decode("latin-1").lower()
        if text in NEVER_KEPT_HEADERS or CREDENTIAL_NAME.search(text):
            return False
        if text in IP_HEADERS:
            return text in exact
        return text in exact or text.startswith(prefixes)

    return keep


def build_envelope(
    *,
    received_at: datetime,
    agent_id: str,
    event_type: str,
    content_sha256: str,
    body: bytes,
    headers: Mapping[str, str] | list[tuple[bytes, bytes]],
    writer_id: str,
    error: str | None = None,
) -> bytes:
    """One landing line, newline-terminated. `body` is the exact raw request body."""
    return orjson.dumps(
        {
            "v": ENVELOPE_VERSION,
            "received_at": received_at.isoformat(timespec="microseconds"),
            "agent_id": agent_id,
            "event_type": event_type,
            "content_sha256": content_sha256,
            "body": body.decode("utf-8"),
            "headers": _kept_headers(headers),
            "writer_id": writer_id,
            "error": error,
        },
        option=orjson.OPT_APPEND_NEWLINE,
    )


@functools.lru_cache(maxsize=64)
def _partition(landing_dir: Path, day: tuple[int, int, int], hour: int) -> Path:
    return landing_dir / f"dt={day[0]:04d}-{day[1]:02d}-{day[2]:02d}" / f"hour={hour:02d}"


_DEFAULT_KEEP = header_allow_list(DEFAULT_KEPT_HEADERS)


def _kept_headers(headers: Mapping[str, str] | list[tuple[bytes, bytes]]) -> dict[str, str]:
    if isinstance(headers, list):  # raw ASGI headers: the default allow-list
        return {k.decode("latin-1"): v.decode("latin-1") for k, v in headers if _DEFAULT_KEEP(k)}
    return dict(headers)  # already chosen by the caller (the listener applies its allow-list)


def partition_dir(landing_dir: Path, received_at: datetime) -> Path:
    """`<landing>/dt=YYYY-MM-DD/hour=HH` of the receive time (cached: it is on the request path)."""
    return _partition(landing_dir, (received_at.year, received_at.month, received_at.day), received_at.hour)


def seal_path(open_path: Path) -> Path:
    return open_path.with_name(open_path.name[: -len(".open")])
