"""The signature scheme against an independent implementation of the contract."""

import hashlib
import hmac
import time

import pytest

from layercode_pipeline.contract.signing import SignatureError, sign, verify_signature


def independent_sign(body: bytes, secret: str, ts: int) -> str:
    # written from the contract text, not from our module
    digest = hmac.new(secret.encode("utf-8"), (str(ts) + ".").encode("utf-8") + body, hashlib.sha256).hexdigest()
    return f"t={ts},v1={digest}"


def test_sign_matches_independent_implementation():
    body = b'{"type":"message","session_id":"s","turn_id":"t","text":"h\xc3\xa9llo"}'
    ts = 1_790_000_000
    assert sign(body, "k", ts) == independent_sign(body, "k", ts)
    assert verify_signature(body, independent_sign(body, "k", ts), ["k"], now=ts + 10) == ts


@pytest.mark.parametrize(
    "header,reason",
    [
        (None, "missing_signature"),
        ("", "missing_signature"),
        ("v1=abc", "malformed_signature"),
        ("t=abc,v1=00", "malformed_signature"),
        ("t=123,v1=zz", "malformed_signature"),
    ],
)
def test_malformed_headers(header, reason):
    with pytest.raises(SignatureError) as err:
        verify_signature(b"{}", header, ["k"])
    assert err.value.reason == reason


def test_stale_and_future_timestamps_refused():
    now = time.time()
    for skew in (-301, 301):
        header = sign(b"{}", "k", int(now + skew))
        with pytest.raises(SignatureError) as err:
            verify_signature(b"{}", header, ["k"], now=now)
        assert err.value.reason == "stale_timestamp"


def test_any_current_secret_accepted_and_wrong_refused():
    header = sign(b"{}", "new")
    assert verify_signature(b"{}", header, ["old", "new"])
    with pytest.raises(SignatureError) as err:
        verify_signature(b"{}", header, ["old"])
    assert err.value.reason == "invalid_signature"


def test_uppercase_hex_accepted():
    ts = int(time.time())
    digest = independent_sign(b"{}", "k", ts).split("v1=")[1]
    assert verify_signature(b"{}", f"t={ts},v1={digest.upper()}", ["k"]) == ts
