"""Stored API keys are Fernet-encrypted (SPEC §2); the plaintext exists only in memory.

``ENCRYPTION_KEY`` may list several keys, newest first (``MultiFernet``): the newest
encrypts, every listed key decrypts, so a new key can be added without losing the
keys stored under the old one; ``python run.py --rotate-keys`` then re-encrypts them.
"""

from __future__ import annotations

import base64
import binascii
from functools import cached_property
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.fernet import MultiFernet

# cryptography is imported on the first encrypt/decrypt, not at start-up: it is about
# 7 MiB resident that an idle bot never touches (issue 14 item 6, bench/hotspots.md).


def parse_keys(value: str) -> list[str]:
    """The keys of a comma-separated list, each checked as Fernet's constructor checks it
    (32 url-safe base64-encoded bytes); ValueError naming the bad element's position.

    The message never quotes the value: it is a secret.
    """
    parts = [part.strip() for part in value.split(",")]
    if not any(parts):
        raise ValueError("no key given")
    for position, part in enumerate(parts, start=1):
        try:
            valid = len(base64.urlsafe_b64decode(part.encode())) == 32
        except (binascii.Error, ValueError):
            valid = False
        if not valid:
            where = f"element {position} of {len(parts)}" if len(parts) > 1 else "the key"
            raise ValueError(f"{where} is not a Fernet key (32 url-safe base64-encoded bytes)")
    return parts


class KeyVault:
    def __init__(self, fernet_keys: str) -> None:
        try:
            self._keys = parse_keys(fernet_keys)
        except ValueError as exc:
            raise ValueError(f"ENCRYPTION_KEY is malformed: {exc}") from None

    @cached_property
    def _fernet(self) -> MultiFernet:
        from cryptography.fernet import Fernet, MultiFernet

        return MultiFernet([Fernet(key.encode()) for key in self._keys])

    @staticmethod
    def generate_key() -> str:
        from cryptography.fernet import Fernet

        return Fernet.generate_key().decode()

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        from cryptography.fernet import InvalidToken

        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken as exc:
            raise ValueError("stored key cannot be decrypted with ENCRYPTION_KEY") from exc

    def rotate(self, token: str) -> str:
        """The same plaintext, encrypted with the newest key (InvalidToken if none fits)."""
        return self._fernet.rotate(token.encode()).decode()
