"""Standard Webhooks signatures (https://www.standardwebhooks.com/): `webhook-signature` is
`v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`, one per secret, space-separated, so a
receiver rotating its secret accepts either. Receivers verify with any implementation of the
spec (the tests use the `standardwebhooks` package, which this project did not write)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable


def signature_header(secrets: Iterable[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode() for key in secrets
    )


def webhook_headers(secrets: Iterable[bytes], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers of one attempt (the timestamp is the attempt's, the id the message's)."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(secrets, msg_id, timestamp, body),
        "content-type": "application/json",
        "user-agent": "layercode-pipeline-webhooks/1",
    }


def new_secret() -> str:
    """A fresh `whsec_` secret (24 random bytes), as a receiver would be given."""
    import secrets

    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
