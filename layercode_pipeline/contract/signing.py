"""`layercode-signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`."""

from __future__ import annotations

import hmac
import re
import time
from collections.abc import Iterable

# The official SDK's pattern; anchored so trailing junk is "malformed", not ignored.
SIGNATURE_RE = re.compile(r"^t=(\d+),v1=([a-fA-F0-9]+)$")
SIGNATURE_HEADER = "layercode-signature"
DEFAULT_TOLERANCE_S = 300


class SignatureError(Exception):
    """Why a request's signature was refused; `reason` is a stable machine-readable code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def compute_signature(body: bytes, secret: str, timestamp: int) -> str:
    # hmac.digest: OpenSSL's one-shot HMAC, a few times cheaper than building an hmac.HMAC
    return hmac.digest(secret.encode(), b"%d.%b" % (timestamp, body), "sha256").hex()


def sign(body: bytes, secret: str, timestamp: int | None = None) -> str:
    """The header value Layercode would send for `body`."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={ts},v1={compute_signature(body, secret, ts)}"


def verify_signature(
    body: bytes,
    header: str | None,
    secrets: Iterable[str],
    *,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> int:
    """Return the signed timestamp, or raise `SignatureError`.

    Verified over the exact raw bytes; every current secret of the agent is tried, each
    comparison in constant time.
    """
    if not header:
        raise SignatureError("missing_signature", f"missing {SIGNATURE_HEADER} header")
    match = SIGNATURE_RE.match(header.strip())
    if match is None:
        raise SignatureError("malformed_signature", "expected 't=<unix seconds>,v1=<hex>'")
    ts, given = int(match.group(1)), match.group(2).lower()
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance_s:
        raise SignatureError("stale_timestamp", f"timestamp is {int(current - ts)} s away from now (tolerance {tolerance_s} s)")
    ok = False
    for secret in secrets:
        # no early exit: the time taken does not tell which secret matched
        ok |= hmac.compare_digest(compute_signature(body, secret, ts), given)
    if not ok:
        raise SignatureError("invalid_signature", "signature does not match the body")
    return ts
