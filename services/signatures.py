"""Crypto Pay's webhook signature (SPEC §3). Constant-time comparison; anything odd fails closed.

Each provider's own check is reached through its ``verify_callback``.
"""

from __future__ import annotations

import hashlib
import hmac


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
