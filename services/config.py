"""Field rules shared by every settings class (the bot's and each provider's own)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit


def http_url(value: str) -> str:
    """An absolute http(s) URL with a host, or ValueError saying what is wrong."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value


def empty_is_unset(value: Any) -> Any:
    # "NAME=" (as copied from .env.example) or "" passed in code means unset, so a
    # required setting left empty is reported missing and an optional one takes its default.
    return None if isinstance(value, str) and not value.strip() else value
