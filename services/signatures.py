"""Callback signatures (SPEC §3). Constant-time comparisons; anything odd fails closed."""

from __future__ import annotations

import hashlib
import hmac
import json


def kryptoexpress_signature(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha512).hexdigest()


def kryptoexpress_compact(raw_body: bytes) -> bytes:
    """The provider's documented canonical form: Python's compact re-serialisation.

    Plain ``json`` (floats) on purpose: this is only a canonical byte string to hash,
    it must equal what ``json.dumps(json.loads(raw), separators=(",", ":"))`` gives.
    """
    return json.dumps(json.loads(raw_body), separators=(",", ":")).encode()


def verify_kryptoexpress(secret: str | None, raw_body: bytes, signature: str | None) -> bool:
    """True only for a body signed with our secret.

    Accepts a match on the raw body or on the documented re-serialisation: Python
    writes ``1.2e-05`` where the provider's own code may write ``0.000012``.
    """
    if not secret or not signature:
        return False
    signature = signature.strip().lower()
    # compare_digest raises on non-ASCII text: a hostile header must be a refusal.
    if len(signature) != 128 or not signature.isascii():
        return False
    if hmac.compare_digest(kryptoexpress_signature(secret, raw_body), signature):
        return True
    try:
        compact = kryptoexpress_compact(raw_body)
    except (ValueError, RecursionError):
        return False
    return hmac.compare_digest(kryptoexpress_signature(secret, compact), signature)


def verify_cryptopay(token: str | None, raw_body: bytes, signature: str | None) -> bool:
    """Crypto Pay: hex HMAC-SHA256, key = SHA-256 digest of the API token, msg = raw body."""
    if not token or not signature:
        return False
    signature = signature.strip().lower()
    if not signature.isascii():
        return False
    key = hashlib.sha256(token.encode()).digest()
    expected = hmac.new(key, raw_body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature)
