"""The bot's HTTP server under hostile input (issue 10, item 7): a signed but absurdly
nested callback body is a 400, and no response names the server software."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import httpx
import pytest

from core.jsonutil import loads
from processing.web import MAX_CALLBACK_BYTES
from tests.harness import running_env


def _sign(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha512).hexdigest()


def test_deep_nesting_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="nested too deeply"):
        loads(b"[" * 100_000 + b"]" * 100_000)


async def test_nested_callback_is_400_and_no_response_names_the_server(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        url = env.app.settings.callback_url("kryptoexpress")
        secret = env.sandbox.callback_secret
        assert url is not None
        depth = (MAX_CALLBACK_BYTES - 16) // 2  # ~32k levels, within the size limit
        nested = b"[" * depth + b"]" * depth
        assert len(nested) <= MAX_CALLBACK_BYTES
        async with httpx.AsyncClient(timeout=10) as http:
            answers = [
                await http.post(
                    url, content=nested, headers={"X-Signature": _sign(secret, nested)}
                ),
                await http.post(url, content=b"{}", headers={"X-Signature": "0" * 128}),
                await http.get(url.rsplit("/payments", 1)[0] + "/healthz"),
                await http.get(url.rsplit("/payments", 1)[0] + "/nowhere"),
            ]
        assert [a.status_code for a in answers] == [400, 401, 200, 404]
        assert answers[0].json() == {"error": "malformed"}
        for answer in answers:
            assert "server" not in answer.headers, answer.headers
            assert "aiohttp" not in str(answer.headers).lower()
