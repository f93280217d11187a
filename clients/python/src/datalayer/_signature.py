"""Verifying the ``datalayer-signature`` header of a push delivery.

A push queue (``QueueService/SetDestination``) has the service POST each
message to its destination URL with a ``datalayer-signature`` header: a JWT
signed with HS256 whose claims bind the delivery to its exact body and URL,
for five minutes::

    header  {"alg":"HS256","typ":"JWT"}
    claims  {"iss":"datalayer","sub":<url>,"iat":<s>,"nbf":<s>,"exp":<s + 300>,
             "jti":<message id>,"body":<base64url(sha256(body)), no padding>}

It is signed with the first key of ``queue.push.signing_key_file``; the file
may hold a second, *next* key. A receiver accepts both, so a rotation
(give receivers the next key, then make it the service's current one) needs
no downtime. Only the standard library is used.

    from datalayer import SignatureError, verify_signature

    try:
        claims = verify_signature(body, request.headers["datalayer-signature"],
                                  keys=[current, next_], url="https://hooks.example.com/analyses")
    except SignatureError as e:
        return 401, str(e)
    message_id = claims["jti"]
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from typing import Any, Sequence, Union

__all__ = [
    "SIGNATURE_HEADER",
    "SignatureError",
    "parse_signing_keys",
    "verify_signature",
]

#: The header a push delivery's signature comes in.
SIGNATURE_HEADER = "datalayer-signature"

#: The issuer the service puts in every signature.
ISSUER = "datalayer"

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_STRING_CLAIMS = ("iss", "sub", "jti", "body")
_TIME_CLAIMS = ("iat", "nbf", "exp")

#: A signing key: the text of one line of the key file, or its bytes.
KeyLike = Union[str, bytes]


class SignatureError(ValueError):
    """A push delivery's ``datalayer-signature`` does not hold: ``reason``
    says why (also the message). Answer such a request with 401 and do not
    act on it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _b64decode(part: str, what: str) -> bytes:
    # base64url without padding, as the service writes it; strictly.
    if not _B64URL.fullmatch(part) or len(part) % 4 == 1:
        raise SignatureError(f"malformed token: the {what} is not base64url")
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise SignatureError(f"malformed token: the {what} is not base64url") from None


def _json_object(part: str, what: str) -> dict[str, Any]:
    raw = _b64decode(part, what)
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise SignatureError(f"malformed token: the {what} is not JSON") from None
    if not isinstance(value, dict):
        raise SignatureError(f"malformed token: the {what} is not a JSON object")
    return value


def body_hash(body: bytes) -> str:
    """``base64url(sha256(body))`` without padding: the ``body`` claim."""
    return base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=").decode("ascii")


def _key_bytes(key: KeyLike) -> bytes:
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode("utf-8")
    raise TypeError(f"a signing key is a str or bytes, got {type(key).__name__}")


def parse_signing_keys(text: str) -> list[str]:
    """The keys of a signing key file, as the service reads it: one per line,
    trimmed, blank lines and ``#`` comments skipped (the first is the
    current key, a second one the next key)."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def verify_signature(
    body: bytes,
    header: str,
    keys: Sequence[KeyLike],
    url: str,
    *,
    leeway: float = 5,
    now: float | None = None,
) -> dict[str, Any]:
    """Checks the ``datalayer-signature`` header of a push delivery and
    answers its claims (``jti`` is the message id, ``sub`` the URL,
    ``iat``/``nbf``/``exp`` Unix seconds).

    Args:
        body: the request body exactly as received (bytes, before parsing).
        header: the ``datalayer-signature`` header's value.
        keys: the signing keys receivers accept: the current one and, during
            a rotation, the next one (the lines of
            ``queue.push.signing_key_file``, see :func:`parse_signing_keys`).
        url: the destination URL exactly as given to ``SetDestination``
            (the service signs that text; a URL rebuilt from the request
            behind a proxy may differ).
        leeway: seconds of clock difference tolerated on ``nbf`` and ``exp``.
        now: the current Unix time (default ``time.time()``).

    Raises:
        SignatureError: (a ``ValueError``) a malformed token, an algorithm
            other than HS256, a signature by no known key, another URL,
            another body, a token not yet valid or expired.
        TypeError: ``keys`` is a single key rather than a sequence of keys.
    """
    if isinstance(keys, (str, bytes)):
        raise TypeError("keys is a sequence of keys (e.g. [current, next]), not one key")
    key_bytes = [_key_bytes(k) for k in keys]
    if not key_bytes:
        raise ValueError("verify_signature needs at least one key")
    if not isinstance(header, str):
        raise SignatureError("malformed token: the header value is not a string")
    parts = header.strip().split(".")
    if len(parts) != 3 or not all(parts):
        raise SignatureError("malformed token: not a JWT (three base64url parts separated by dots)")
    head_part, claims_part, sig_part = parts

    head = _json_object(head_part, "JWT header")
    alg = head.get("alg")
    if alg != "HS256":
        raise SignatureError(f"unsupported algorithm {alg!r}: datalayer signs with HS256")
    signature = _b64decode(sig_part, "signature")

    signed = f"{head_part}.{claims_part}".encode("ascii")
    known = False
    for key in key_bytes:  # every key, whatever matched: no early exit
        expected = hmac.new(key, signed, hashlib.sha256).digest()
        known |= hmac.compare_digest(expected, signature)
    if not known:
        raise SignatureError("signed by no known key")

    claims = _json_object(claims_part, "claims")
    for name in _STRING_CLAIMS:
        if not isinstance(claims.get(name), str):
            raise SignatureError(f"malformed token: claim {name!r} is missing or not a string")
    for name in _TIME_CLAIMS:
        value = claims.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SignatureError(f"malformed token: claim {name!r} is missing or not a number")
    if claims["iss"] != ISSUER:
        raise SignatureError(f"issued by {claims['iss']!r}, not {ISSUER!r}")
    if claims["sub"] != url:
        raise SignatureError(f"signed for another URL: {claims['sub']!r}, not {url!r}")
    if not hmac.compare_digest(claims["body"].encode("ascii", "replace"), body_hash(body).encode("ascii")):
        raise SignatureError("the body changed: its SHA-256 is not the one signed")
    t = time.time() if now is None else now
    if t + leeway < claims["nbf"]:
        raise SignatureError(f"not valid yet: valid from {claims['nbf']}, it is {t:.0f} (leeway {leeway:g}s)")
    if t > claims["exp"] + leeway:
        raise SignatureError(f"expired at {claims['exp']}, it is {t:.0f} (leeway {leeway:g}s)")
    return claims
