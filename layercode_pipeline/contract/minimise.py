"""What the pipeline keeps of a payload that identifies a caller, decided before anything is
stored: the listener applies it to each webhook before landing it (after verifying the
signature on the bytes as sent), the REST backfill to each session record before storing it.

- The caller's IP address (`ip_address`) is dropped unless LAYERCODE_KEEP_CALLER_IP says keep.
- With LAYERCODE_HASH_PHONE_NUMBERS, `from_phone_number` and `to_phone_number` are stored as
  keyed hashes (`phash:` and 32 hex digits of HMAC-SHA256 with the privacy key): the same
  number always gives the same hash, so repeat callers still count, and the number itself is
  never stored. The key must be the same on every host that lands events.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

PHONE_FIELDS = ("from_phone_number", "to_phone_number")
PHONE_HASH_PREFIX = "phash:"


def phone_hash(key: str, number: str) -> str:
    return PHONE_HASH_PREFIX + hmac.new(key.encode(), number.encode(), hashlib.sha256).hexdigest()[:32]


@dataclass(frozen=True)
class Minimisation:
    keep_caller_ip: bool = False
    phone_key: str | None = None  # set: phone numbers are stored as keyed hashes

    @property
    def changes_anything(self) -> bool:
        return not self.keep_caller_ip or self.phone_key is not None

    def apply(self, payload: dict[str, Any]) -> bool:
        """Minimise `payload` in place; whether it changed."""
        changed = False
        if not self.keep_caller_ip and payload.get("ip_address") is not None:
            payload["ip_address"] = None
            changed = True
        if self.phone_key is not None:
            for name in PHONE_FIELDS:
                value = payload.get(name)
                if isinstance(value, str) and value and not value.startswith(PHONE_HASH_PREFIX):
                    payload[name] = phone_hash(self.phone_key, value)
                    changed = True
        return changed
