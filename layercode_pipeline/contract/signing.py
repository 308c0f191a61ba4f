"""`layercode-signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`.

Parsed as comma-separated pairs; any `v1` that matches any current secret of the agent is
accepted. Two `layercode-signature` headers on one request are refused by the listener as
ambiguous (which one did the sender mean?).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Iterable

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


_HEX = frozenset("0123456789abcdef")
MAX_TIMESTAMP_DIGITS = 12  # Unix seconds until the year 33658


def parse_signature_header(header: str) -> tuple[int, list[str]]:
    """`t=<unix seconds>,v1=<hex>[,v1=<hex>...]` as comma-separated `key=value` pairs (contract
    section 5): the timestamp and every `v1` (a secret rotation may send several). Pairs of
    other schemes (`v0=...`) are ignored, as the SDK's unanchored pattern ignores them."""
    ts: int | None = None
    candidates: list[str] = []
    for pair in header.split(","):
        key, sep, value = pair.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            # ASCII digits only (str.isdigit() also takes Arabic-Indic or superscript digits), and
            # at most 12 of them: a 400-digit number is no Unix time and overflows float arithmetic
            if not (value.isascii() and value.isdigit() and len(value) <= MAX_TIMESTAMP_DIGITS) or ts is not None:
                raise SignatureError("malformed_signature", "expected one 't=<unix seconds>'")
            ts = int(value)
        elif key == "v1":
            value = value.lower()
            if value and set(value) <= _HEX:
                candidates.append(value)
    if ts is None or not candidates:
        raise SignatureError("malformed_signature", "expected 't=<unix seconds>,v1=<hex>'")
    return ts, candidates


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
    ts, candidates = parse_signature_header(header)
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance_s:
        raise SignatureError(
            "stale_timestamp", f"timestamp is {int(current - ts)} s away from now (tolerance {tolerance_s} s)"
        )
    ok = False
    for secret in secrets:
        expected = compute_signature(body, secret, ts)
        for given in candidates:
            # no early exit: the time taken does not tell which secret or signature matched
            ok |= hmac.compare_digest(expected, given)
    if not ok:
        raise SignatureError("invalid_signature", "signature does not match the body")
    return ts
