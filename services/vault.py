"""Stored API keys are Fernet-encrypted (SPEC §2); the plaintext exists only in memory.

``ENCRYPTION_KEY`` may list several keys, newest first (``MultiFernet``): the newest
encrypts, every listed key decrypts, so a new key can be added without losing the
keys stored under the old one; ``python run.py --rotate-keys`` then re-encrypts them.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet


def parse_keys(value: str) -> list[Fernet]:
    """Fernets of a comma-separated key list; ValueError naming the bad element's position.

    The message never quotes the value: it is a secret.
    """
    parts = [part.strip() for part in value.split(",")]
    if not any(parts):
        raise ValueError("no key given")
    fernets = []
    for position, part in enumerate(parts, start=1):
        try:
            fernets.append(Fernet(part.encode()))
        except (ValueError, TypeError):
            where = f"element {position} of {len(parts)}" if len(parts) > 1 else "the key"
            raise ValueError(
                f"{where} is not a Fernet key (32 url-safe base64-encoded bytes)"
            ) from None
    return fernets


class KeyVault:
    def __init__(self, fernet_keys: str) -> None:
        try:
            self._fernet = MultiFernet(parse_keys(fernet_keys))
        except ValueError as exc:
            raise ValueError(f"ENCRYPTION_KEY is malformed: {exc}") from None

    @staticmethod
    def generate_key() -> str:
        return Fernet.generate_key().decode()

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken as exc:
            raise ValueError("stored key cannot be decrypted with ENCRYPTION_KEY") from exc

    def rotate(self, token: str) -> str:
        """The same plaintext, encrypted with the newest key (InvalidToken if none fits)."""
        return self._fernet.rotate(token.encode()).decode()
