"""`datalayer.verify_signature`: each way a `datalayer-signature` can fail,
on tokens made here exactly as `src/services/queue/push/sign.rs` makes them
(no service needed; `test_push.py` verifies real deliveries)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest

from datalayer import SignatureError, parse_signing_keys, verify_signature
from datalayer._signature import body_hash

CURRENT = "current-key-0123456789"
NEXT = "next-key-0123456789ab"
KEYS = [CURRENT, NEXT]
URL = "http://hooks.example.com/x"
BODY = b'{"hello":"world"}'
NOW = 1_700_000_000


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def token(
    key: str | bytes = CURRENT,
    *,
    url: str = URL,
    body: bytes = BODY,
    now: int = NOW,
    head: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    """A token as the service signs it (serde's field order, compact JSON)."""
    c: dict[str, Any] = {
        "iss": "datalayer",
        "sub": url,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": "7",
        "body": body_hash(body),
    }
    c.update(claims)
    h = b64(json.dumps(head or {"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    signed = f"{h}.{b64(json.dumps(c, separators=(',', ':')).encode())}"
    k = key.encode() if isinstance(key, str) else key
    return f"{signed}.{b64(hmac.new(k, signed.encode(), hashlib.sha256).digest())}"


def reason(header: str, **kwargs: Any) -> str:
    args: dict[str, Any] = {"body": BODY, "keys": KEYS, "url": URL, "now": NOW}
    args.update(kwargs)
    with pytest.raises(SignatureError) as e:
        verify_signature(args.pop("body"), header, args.pop("keys"), args.pop("url"), **args)
    assert isinstance(e.value, ValueError)
    assert e.value.reason == str(e.value)
    return e.value.reason


def test_a_good_token_answers_its_claims() -> None:
    claims = verify_signature(BODY, token(), KEYS, URL, now=NOW)
    assert claims == {
        "iss": "datalayer",
        "sub": URL,
        "iat": NOW,
        "nbf": NOW,
        "exp": NOW + 300,
        "jti": "7",
        "body": body_hash(BODY),
    }
    # The body claim is base64url(sha256(body)) without padding.
    assert claims["body"] == base64.urlsafe_b64encode(hashlib.sha256(BODY).digest()).decode().rstrip("=")
    # Keys as bytes, a one-key list, and surrounding whitespace in the header.
    assert verify_signature(BODY, f" {token()}\n", [CURRENT.encode()], URL, now=NOW)["jti"] == "7"


def test_a_token_signed_by_the_next_key_verifies() -> None:
    """After a rotation the service signs with what was the next key."""
    assert verify_signature(BODY, token(NEXT), KEYS, URL, now=NOW)["jti"] == "7"
    assert reason(token(NEXT), keys=[CURRENT]) == "signed by no known key"


def test_unknown_keys_are_refused() -> None:
    assert reason(token("another-key-0123456789")) == "signed by no known key"
    # A tampered signature, or claims changed after signing.
    t = token()
    head, claims, sig = t.split(".")
    flipped = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
    assert reason(f"{head}.{claims}.{flipped}") == "signed by no known key"
    forged = b64(json.dumps({"iss": "datalayer", "sub": URL, "jti": "8"}).encode())
    assert reason(f"{head}.{forged}.{sig}") == "signed by no known key"


def test_malformed_tokens_are_refused() -> None:
    for bad in ["", "abc", "a.b", "a.b.c.d", "..", f"{token()}.", "a b.c.d"]:
        assert reason(bad).startswith("malformed token"), bad
    head, claims, sig = token().split(".")
    assert "JWT header is not JSON" in reason(f"{b64(b'not json')}.{claims}.{sig}")
    assert "JWT header is not a JSON object" in reason(f"{b64(b'[1]')}.{claims}.{sig}")
    assert "signature is not base64url" in reason(f"{head}.{claims}.{sig}!")
    assert "JWT header is not base64url" in reason(f"{head}=.{claims}.{sig}")
    # Claims that are signed but not what the service writes.
    assert "claims is not JSON" in reason(_signed_raw(b"not json"))
    assert "'exp' is missing or not a number" in reason(token(exp="soon"))
    assert "'exp' is missing or not a number" in reason(token(exp=True))
    assert "'sub' is missing or not a string" in reason(token(sub=None))


def _signed_raw(claims: bytes, key: str = CURRENT) -> str:
    head = b64(b'{"alg":"HS256","typ":"JWT"}')
    signed = f"{head}.{b64(claims)}"
    return f"{signed}.{b64(hmac.new(key.encode(), signed.encode(), hashlib.sha256).digest())}"


def test_other_algorithms_are_refused() -> None:
    assert reason(token(head={"alg": "none", "typ": "JWT"})) == "unsupported algorithm 'none': datalayer signs with HS256"
    assert "'HS512'" in reason(token(head={"alg": "HS512", "typ": "JWT"}))
    assert "None" in reason(token(head={"typ": "JWT"}))
    # alg=none with an empty signature is malformed, whatever the claims say.
    head = b64(b'{"alg":"none"}')
    assert reason(f"{head}.{token().split('.')[1]}.").startswith("malformed token")


def test_another_url_is_refused() -> None:
    assert reason(token(), url="http://hooks.example.com/y") == (
        "signed for another URL: 'http://hooks.example.com/x', not 'http://hooks.example.com/y'"
    )
    # Compared as text, exactly as given to SetDestination.
    assert "another URL" in reason(token(), url=URL + "/")
    assert "another URL" in reason(token(), url=URL.upper())


def test_another_body_is_refused() -> None:
    assert reason(token(), body=BODY + b" ") == "the body changed: its SHA-256 is not the one signed"
    assert "body changed" in reason(token(), body=b"")
    assert verify_signature(b"", token(body=b""), KEYS, URL, now=NOW)["body"] == body_hash(b"")


def test_time_bounds_with_leeway() -> None:
    t = token()
    assert reason(t, now=NOW - 6).startswith("not valid yet")
    assert verify_signature(BODY, t, KEYS, URL, now=NOW - 5)  # within the default 5 s leeway
    assert reason(t, now=NOW - 1, leeway=0).startswith("not valid yet")
    assert verify_signature(BODY, t, KEYS, URL, now=NOW + 305)
    assert reason(t, now=NOW + 306).startswith("expired")
    assert reason(t, now=NOW + 301, leeway=0).startswith("expired at")
    assert verify_signature(BODY, t, KEYS, URL, now=NOW + 300, leeway=0)
    # The default clock is time.time(): a token made now verifies, one from 2023 has expired.
    import time

    assert verify_signature(BODY, token(now=int(time.time())), KEYS, URL)
    assert reason(t, now=None).startswith("expired")


def test_another_issuer_is_refused() -> None:
    assert reason(token(iss="someone")) == "issued by 'someone', not 'datalayer'"


def test_keys_must_be_a_sequence_of_keys() -> None:
    with pytest.raises(TypeError, match="sequence of keys"):
        verify_signature(BODY, token(), CURRENT, URL, now=NOW)
    with pytest.raises(ValueError, match="at least one key"):
        verify_signature(BODY, token(), [], URL, now=NOW)
    with pytest.raises(TypeError):
        verify_signature(BODY, token(), [42], URL, now=NOW)  # type: ignore[list-item]


def test_parse_signing_keys_reads_the_key_file_as_the_service_does() -> None:
    text = f"# rotated 2025-01-01\n  {CURRENT}  \n\n{NEXT}\n"
    assert parse_signing_keys(text) == [CURRENT, NEXT]
    assert parse_signing_keys("") == []
