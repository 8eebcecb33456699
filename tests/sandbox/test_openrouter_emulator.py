"""The OpenRouter emulator speaks OpenRouter's wire shapes, over real loopback HTTP."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import pytest

from sandbox.common import Served, dumps, loads
from sandbox.openrouter import OpenRouterEmulator
from sandbox.provider_control import ControlError, OpenRouterControl

MGMT = "sk-or-v1-mgmt-test"
API_KEY = "sk-or-v1-ordinary-test"


@dataclass
class Env:
    emulator: OpenRouterEmulator
    http: httpx.AsyncClient
    control: OpenRouterControl

    async def call(
        self, method: str, path: str, *, key: str | None = MGMT, body: Any = None, **kw: Any
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        if body is not None:
            headers["Content-Type"] = "application/json"
            kw["content"] = dumps(body)
        response = await self.http.request(method, path, headers=headers, **kw)
        return response.status_code, loads(response.content) if response.content else None


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    emulator = OpenRouterEmulator(MGMT, api_key=API_KEY)
    served = Served(emulator.app)
    url = await served.start()
    async with (
        httpx.AsyncClient(base_url=url + "/api/v1", timeout=5) as http,
        OpenRouterControl(url) as control,
    ):
        yield Env(emulator, http, control)
    await served.stop()


async def create_key(
    env: Env, name: str, limit: Decimal | None = None
) -> tuple[dict[str, Any], str]:
    status, body = await env.call("POST", "/keys", body={"name": name, "limit": limit})
    assert status == 201, body
    return body["data"], body["key"]


async def test_models_shape_and_string_prices(env: Env) -> None:
    status, body = await env.call("GET", "/models", key=None)
    assert status == 200
    models = {m["id"]: m for m in body["data"]}
    assert set(models) >= {
        "anthropic/claude-3-sonnet",
        "openai/gpt-4o-mini",
        "meta-llama/llama-3.1-8b-instruct",
        "google/gemini-flash-1.5",
        "mistralai/mistral-7b-instruct:free",
        "openrouter/auto",
    }
    sonnet = models["anthropic/claude-3-sonnet"]
    assert sonnet["name"] == "Anthropic: Claude 3 Sonnet"
    assert isinstance(sonnet["created"], int) and isinstance(sonnet["context_length"], int)
    assert sonnet["pricing"] == {
        "prompt": "0.000003",
        "completion": "0.000015",
        "request": "0",
        "image": "0",
    }
    assert models["openai/gpt-4o-mini"]["pricing"]["prompt"] == "0.00000015"
    assert models["google/gemini-flash-1.5"]["pricing"]["prompt"] == "0.000000075"
    assert models["mistralai/mistral-7b-instruct:free"]["pricing"]["completion"] == "0"
    assert models["openrouter/auto"]["pricing"]["completion"] == "-1"
    for model in models.values():
        for price in model["pricing"].values():
            assert isinstance(price, str) and "e" not in price.lower()

    await env.control.set_models([{"id": "x/only", "prompt": "0.000001", "completion": "0.000002"}])
    _, body = await env.call("GET", "/models", key=None)
    assert [(m["id"], m["name"], m["pricing"]["completion"]) for m in body["data"]] == [
        ("x/only", "x/only", "0.000002")
    ]


async def test_key_lifecycle(env: Env) -> None:
    data, plaintext = await create_key(env, "tg-42", Decimal("1.5"))
    assert re.fullmatch(r"sk-or-v1-[0-9a-f]{64}", plaintext)
    assert re.fullmatch(r"[0-9a-f]{64}", data["hash"])
    secret = plaintext.removeprefix("sk-or-v1-")
    assert data["label"] == f"sk-or-v1-{secret[:3]}...{secret[-4:]}"
    assert data["name"] == "tg-42" and data["disabled"] is False
    assert data["limit"] == Decimal("1.5") and data["limit_remaining"] == Decimal("1.5")
    assert data["usage"] == 0 and data["byok_usage"] == 0
    assert data["created_at"].endswith("Z") and data["updated_at"] is None
    assert "key" not in data

    key_hash = data["hash"]
    status, body = await env.call("GET", f"/keys/{key_hash}")
    assert status == 200 and body["data"] == data

    status, body = await env.call(
        "PATCH", f"/keys/{key_hash}", body={"limit": Decimal("3.25"), "name": "renamed"}
    )
    assert status == 200
    assert body["data"]["limit"] == Decimal("3.25") and body["data"]["name"] == "renamed"
    assert body["data"]["updated_at"] is not None

    for bad in ({"limit": -1}, {"limit": "5"}, {"disabled": "yes"}, {"limit_reset": "hourly"}):
        status, body = await env.call("PATCH", f"/keys/{key_hash}", body=bad)
        assert status == 400 and body["error"]["code"] == 400, bad
    _, body = await env.call("GET", f"/keys/{key_hash}")
    assert body["data"]["limit"] == Decimal("3.25")  # a refused patch changes nothing

    status, body = await env.call("POST", "/keys", body={"limit": 1})
    assert status == 400 and body["error"]["code"] == 400

    status, body = await env.call("DELETE", f"/keys/{key_hash}")
    assert (status, body) == (200, {"deleted": True})
    status, body = await env.call("GET", f"/keys/{key_hash}")
    assert status == 404
    assert body == {"error": {"code": 404, "message": "Resource not found"}}

    # The request log shows exactly what was sent, Decimals intact.
    patches = [r for r in await env.control.requests() if r["method"] == "PATCH"]
    assert patches[0]["body"] == {"limit": Decimal("3.25"), "name": "renamed"}
    assert patches[0]["status"] == 200


async def test_listing_pages_of_100_and_disabled_filter(env: Env) -> None:
    hashes = [(await create_key(env, f"k{i}"))[0]["hash"] for i in range(150)]
    status, _ = await env.call("PATCH", f"/keys/{hashes[0]}", body={"disabled": True})
    assert status == 200

    async def page(offset: int, include_disabled: str) -> list[str]:
        status, body = await env.call(
            "GET", "/keys", params={"offset": offset, "include_disabled": include_disabled}
        )
        assert status == 200
        return [k["hash"] for k in body["data"]]

    first, second, third = [await page(o, "true") for o in (0, 100, 200)]
    assert len(first) == 100 and len(second) == 50 and third == []
    assert first + second == hashes  # creation order
    assert await page(0, "false") + await page(100, "false") == hashes[1:]

    control_keys = await env.control.keys()
    assert len(control_keys) == 150 and all(k["key"].startswith("sk-or-v1-") for k in control_keys)


async def test_auth_errors(env: Env) -> None:
    status, body = await env.call("GET", "/keys", key=None)
    assert status == 401 and body["error"] == {"code": 401, "message": "No auth credentials found"}
    status, body = await env.call("GET", "/keys", key="sk-or-v1-nonsense")
    assert status == 401 and body["error"]["code"] == 401

    _, buyer = await create_key(env, "buyer")
    for key in (buyer, API_KEY):
        for method, path in (("GET", "/keys"), ("POST", "/keys"), ("GET", "/credits")):
            status, body = await env.call(method, path, key=key, body={"name": "x"})
            assert status == 403, (key, path)
            assert body["error"]["message"] == "Only management keys can perform this operation"

    status, body = await env.call("GET", "/keys/" + "0" * 64)
    assert status == 404 and body["error"]["message"] == "Resource not found"
    status, body = await env.call("PATCH", "/keys/" + "0" * 64, body={"limit": 1})
    assert status == 404
    status, body = await env.call("GET", "/no/such/route")
    assert status == 404 and body["error"]["code"] == 404


async def test_limit_remaining_is_exact_decimal(env: Env) -> None:
    data, _ = await create_key(env, "exact", Decimal("0.3"))
    key = await env.control.spend(data["hash"], Decimal("0.1"))
    key = await env.control.spend(data["hash"], Decimal("0.1"))
    # In float 0.3 - 0.1 - 0.1 is 0.09999999999999998.
    assert key["limit_remaining"] == Decimal("0.1")
    assert key["usage"] == Decimal("0.2")

    # Over the limit is the test's choice; remaining goes negative, not clamped.
    key = await env.control.spend(data["hash"], Decimal("0.25"))
    assert key["limit_remaining"] == Decimal("-0.15")

    # With a reset period the limit counts against that period's usage.
    status, body = await env.call(
        "PATCH", f"/keys/{data['hash']}", body={"limit": 1, "limit_reset": "daily"}
    )
    assert status == 200
    key = await env.control.spend(data["hash"], Decimal("0.05"), daily=Decimal("0.01"))
    assert body["data"]["limit_remaining"] == Decimal("0.55")  # 1 - daily 0.45
    assert key["usage_daily"] == Decimal("0.46") and key["usage_weekly"] == Decimal("0.5")
    assert key["limit_remaining"] == Decimal("0.54")

    status, body = await env.call("PATCH", f"/keys/{data['hash']}", body={"limit": None})
    assert body["data"]["limit"] is None and body["data"]["limit_remaining"] is None


async def test_spend_shows_in_key_views_and_credits(env: Env) -> None:
    data, plaintext = await create_key(env, "buyer", Decimal("5"))
    await env.control.set_credits(total_credits=Decimal("20.5"), total_usage=Decimal("1.25"))
    await env.control.spend(data["hash"], Decimal("1.234567"))

    status, body = await env.call("GET", "/key", key=plaintext)
    assert status == 200
    own = body["data"]
    assert own["label"] == data["label"] and own["limit"] == Decimal("5")
    assert own["usage"] == own["usage_daily"] == own["usage_monthly"] == Decimal("1.234567")
    assert own["limit_remaining"] == Decimal("3.765433")
    assert own["is_free_tier"] is False and own["is_management_key"] is False

    _, body = await env.call("GET", f"/keys/{data['hash']}")
    assert body["data"]["usage_weekly"] == Decimal("1.234567")

    status, body = await env.call("GET", "/credits")
    assert status == 200
    assert body == {"data": {"total_credits": Decimal("20.5"), "total_usage": Decimal("2.484567")}}
    assert await env.control.credits() == body

    with pytest.raises(ControlError) as caught:
        await env.control.spend("f" * 64, Decimal(1))
    assert caught.value.status == 404


async def test_chat_completion_bills_and_stops_at_limit(env: Env) -> None:
    # "echo: abcdefgh": prompt 14 chars = 4 tokens, answer "abcdefgh" = 3 tokens.
    # Sonnet: 4 × 0.000003 + 3 × 0.000015 = 0.000057 per call. The worst case checked up
    # front (prompt + max_tokens 10) is 0.000012 + 0.00015 = 0.000162.
    data, plaintext = await create_key(env, "chatter", Decimal("0.0003"))
    request = {
        "model": "anthropic/claude-3-sonnet",
        "messages": [{"role": "user", "content": "echo: abcdefgh"}],
        "max_tokens": 10,
    }
    for expected_usage in (Decimal("0.000057"), Decimal("0.000114"), Decimal("0.000171")):
        status, body = await env.call("POST", "/chat/completions", key=plaintext, body=request)
        assert status == 200, body
        assert body["id"].startswith("gen-") and body["model"] == "anthropic/claude-3-sonnet"
        assert body["choices"][0]["message"] == {"role": "assistant", "content": "abcdefgh"}
        assert body["choices"][0]["finish_reason"] == "stop"
        assert body["usage"]["prompt_tokens"] == 4
        assert body["usage"]["completion_tokens"] == 3
        assert body["usage"]["cost"] == Decimal("0.000057")
        _, key = await env.call("GET", f"/keys/{data['hash']}")
        assert key["data"]["usage"] == expected_usage
        _, stats = await env.call("GET", "/generation", key=plaintext, params={"id": body["id"]})
        assert stats["data"]["total_cost"] == Decimal("0.000057")

    # 0.000129 left < the worst case: refused with 402, as OpenRouter does, nothing billed.
    status, body = await env.call("POST", "/chat/completions", key=plaintext, body=request)
    assert status == 402
    assert body["error"]["message"] == "Key limit exceeded (total limit)"
    _, credits = await env.call("GET", "/credits")
    assert credits["data"]["total_usage"] == Decimal("0.000171")

    # A free model still answers.
    free = {**request, "model": "mistralai/mistral-7b-instruct:free"}
    status, _ = await env.call("POST", "/chat/completions", key=plaintext, body=free)
    assert status == 200

    status, _ = await env.call("PATCH", f"/keys/{data['hash']}", body={"disabled": True})
    assert status == 200
    status, body = await env.call("POST", "/chat/completions", key=plaintext, body=free)
    assert status == 401
    status, body = await env.call("POST", "/chat/completions", key="sk-or-v1-x", body=free)
    assert status == 401
    # The account's own ordinary key works without a limit.
    status, body = await env.call("POST", "/chat/completions", key=API_KEY, body=request)
    assert status == 200 and body["usage"]["cost"] == Decimal("0.000057")


def _events(raw: bytes) -> list[str]:
    return [block for block in raw.decode().split("\n\n") if block]


async def test_chat_stream_sends_chunks_usage_and_done(env: Env) -> None:
    data, plaintext = await create_key(env, "streamer", Decimal("1"))
    request = {
        "model": "anthropic/claude-3-sonnet",
        "messages": [{"role": "user", "content": "echo: **bold** <b> & more"}],
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {plaintext}"}
    response = await env.http.post("/chat/completions", headers=headers, content=dumps(request))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    blocks = _events(response.content)
    assert blocks[0] == ": OPENROUTER PROCESSING" and blocks[-1] == "data: [DONE]"
    chunks = [loads(b.removeprefix("data: ")) for b in blocks[1:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "**bold** <b> & more"
    assert len([c for c in chunks if c["choices"]]) > 2  # it really streams in pieces
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finish[-1] == "stop"
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == []
    _, key = await env.call("GET", f"/keys/{data['hash']}")
    assert key["data"]["usage"] == usage["cost"] > 0


async def test_chat_stream_hangup_bills_what_was_generated(env: Env) -> None:
    data, plaintext = await create_key(env, "quitter", Decimal("1"))
    await env.control.set_chat(hold_after=2)
    request = {
        "model": "anthropic/claude-3-sonnet",
        "messages": [{"role": "user", "content": "long: 50"}],
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {plaintext}"}
    async with env.http.stream(
        "POST", "/chat/completions", headers=headers, content=dumps(request)
    ) as response:
        seen = ""
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                seen += loads(line.removeprefix("data: "))["choices"][0]["delta"]["content"]
            if seen.count("word") == 2:
                break
    assert seen == "word1 word2 "
    for _ in range(200):
        if await env.control.generations():
            break
        await asyncio.sleep(0.01)
    [generation] = await env.control.generations()
    assert generation["finish_reason"] == "cancelled"
    assert generation["tokens_completion"] == 4  # "word1 word2 " = 12 chars
    _, key = await env.call("GET", f"/keys/{data['hash']}")
    assert key["data"]["usage"] == generation["total_cost"]


async def test_chat_stream_error_mid_answer(env: Env) -> None:
    _, plaintext = await create_key(env, "unlucky", Decimal("1"))
    await env.control.set_chat(error_after=1)
    request = {
        "model": "anthropic/claude-3-sonnet",
        "messages": [{"role": "user", "content": "long: 5"}],
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {plaintext}"}
    response = await env.http.post("/chat/completions", headers=headers, content=dumps(request))
    chunks = [loads(b.removeprefix("data: ")) for b in _events(response.content)[1:]]
    assert chunks[-1]["error"]["code"] == 502
    assert chunks[-1]["choices"][0]["finish_reason"] == "error"


async def test_coinbase_is_gone(env: Env) -> None:
    status, body = await env.call("POST", "/credits/coinbase", body={"amount": 10})
    assert status == 410 and body["error"]["code"] == 410
    log = await env.control.requests()
    assert [(r["method"], r["path"], r["status"]) for r in log] == [
        ("POST", "/api/v1/credits/coinbase", 410)
    ]
    assert log[0]["body"] == {"amount": 10}
    assert await env.control.requests(after=log[-1]["seq"]) == []


async def test_injected_503_and_timeout(env: Env) -> None:
    await env.control.add_fault(path="/api/v1/credits", status=503, count=1)
    status, body = await env.call("GET", "/credits")
    assert status == 503 and body["error"]["code"] == 503
    status, _ = await env.call("GET", "/credits")
    assert status == 200  # count=1: only the first one failed

    await env.control.add_fault(path="/api/v1/keys", method="GET", mode="timeout", delay=0.3)
    with pytest.raises(httpx.ReadTimeout):
        await env.http.get("/keys", headers={"Authorization": f"Bearer {MGMT}"}, timeout=0.05)
    status, _ = await env.call("GET", "/keys")
    assert status == 200
    # Control routes are never faulted, and the log holds the failed calls too.
    await env.control.add_fault(path="", status=500, count=None)
    statuses = [r["status"] for r in await env.control.requests()]
    assert statuses[:2] == [503, 200]
    await env.control.clear_faults()
    status, _ = await env.call("GET", "/credits")
    assert status == 200


async def test_reset(env: Env) -> None:
    await create_key(env, "gone")
    await env.control.set_credits(total_credits=Decimal(1))
    await env.control.reset()
    assert await env.control.keys() == []
    assert await env.control.requests() == []
    assert (await env.control.credits())["data"]["total_credits"] == Decimal(100)


async def test_applied_then_answer_lost(env: Env) -> None:
    """The change lands, the answer does not: a 500 after applying, or a dropped socket."""
    data, _ = await create_key(env, "applied", Decimal("1"))
    path = f"/api/v1/keys/{data['hash']}"
    await env.control.add_fault(path=path, method="PATCH", mode="apply_then_status", status=500)
    status, body = await env.call("PATCH", f"/keys/{data['hash']}", body={"limit": Decimal("2")})
    assert status == 500 and body["error"]["code"] == 500
    assert (await env.call("GET", f"/keys/{data['hash']}"))[1]["data"]["limit"] == Decimal("2")

    await env.control.add_fault(path=path, method="PATCH", mode="apply_then_drop")
    with pytest.raises(httpx.TransportError):
        await env.http.patch(
            f"/keys/{data['hash']}",
            headers={"Authorization": f"Bearer {MGMT}", "Content-Type": "application/json"},
            content=dumps({"limit": Decimal("3")}),
        )
    assert (await env.call("GET", f"/keys/{data['hash']}"))[1]["data"]["limit"] == Decimal("3")
    # Generic: any mutating route, e.g. creating a key.
    await env.control.add_fault(path="/api/v1/keys", method="POST", mode="apply_then_status")
    status, _ = await env.call("POST", "/keys", body={"name": "ghost"})
    assert status == 503
    assert [k["name"] for k in await env.control.keys()].count("ghost") == 1
