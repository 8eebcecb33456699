"""Stored API keys are Fernet-encrypted (SPEC §2); the plaintext exists only in memory."""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken


class KeyVault:
    def __init__(self, fernet_key: str) -> None:
        try:
            self._fernet = Fernet(fernet_key.encode())
        except (ValueError, TypeError) as exc:
            raise ValueError("ENCRYPTION_KEY is not a valid Fernet key") from exc

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
