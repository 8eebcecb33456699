"""OpenRouter emulator: models, Management API keys, credits and a billing chat endpoint.

Speaks the wire shapes of ``shared/reference/providers.md`` under ``/api/v1`` (the bot is
configured with ``OPENROUTER_BASE_URL = <url>/api/v1``). Errors use OpenRouter's envelope
``{"error": {"code": N, "message": "..."}}`` with HTTP status = code, including for
unknown routes. Every amount is a ``Decimal``; request bodies are parsed with ``loads``.
This module is the app and its routes; the catalogue, keys, error envelope and input
rules live in ``sandbox.openrouter_model``.

Test steering lives under ``/control/`` (never faulted, never logged):

- ``POST /control/credits`` ``{total_credits?, total_usage?}``, ``GET /control/credits``
- ``POST /control/keys/{hash}/spend`` ``{amount, daily?, weekly?, monthly?}``
- ``GET /control/keys`` — every key ever created, with its plaintext ``key`` and ``deleted``
- ``POST /control/models`` — replace the catalogue: ``[{id, name?, prompt, completion}]``
- ``GET /control/requests?after=N`` — the log of API requests (a JSON list)
- ``POST /control/chat`` ``{delay?, hold_after?, error_after?}``, ``POST /control/chat/release``,
  ``GET /control/generations`` — steer and read the fake model's streams
- ``POST /control/reset`` — back to the constructor's state (keys, log, faults cleared)
- ``POST|GET|DELETE /control/faults`` — see ``sandbox.common.FaultInjector``

Emulator simplifications, on purpose:

- usage_daily/weekly/monthly never reset by the clock; tests set them via ``spend``.
- Chat completions answer with a deterministic fake model (``sandbox.openrouter_model``:
  "echo: …", "long: N", otherwise "You said: …"), ~4 characters a token, billed at the
  model's prompt and completion prices; ``stream: true`` answers in server-sent events.
  Like OpenRouter, a request whose worst case (prompt + ``max_tokens``, default 100) does
  not fit the key's remaining limit is refused with 402. A variable-priced router
  (price ``"-1"``, e.g. ``openrouter/auto``) bills at the
  catalogue's highest prices and answers with that model's id.
- The optional ordinary ``api_key`` (the account's own inference key) is not listed by
  ``GET /keys``; it has no limit and its inference is billed to the account only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import time
from datetime import datetime
from decimal import Decimal
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from sandbox.common import FaultInjector, RequestLog, dumps, json_response, loads, now_iso
from sandbox.openrouter_model import (
    DEFAULT_MODELS,
    ApiError,
    ChatSettings,
    Generation,
    Key,
    Model,
    answer_chunks,
    count_tokens,
    fake_answer,
    json_object,
    optional_bool,
    parse_amount,
    parse_limit_reset,
    prompt_tokens,
)

API_PREFIX = "/api/v1"
CONTROL_PREFIX = "/control"
KEYS_PAGE_SIZE = 100
DEFAULT_MAX_TOKENS = 100


class OpenRouterEmulator:
    """An in-process OpenRouter account: one management key, buyer keys, credits."""

    def __init__(
        self,
        management_key: str,
        *,
        api_key: str | None = None,
        models: list[dict[str, Any]] | None = None,
        total_credits: Decimal = Decimal("100"),
        total_usage: Decimal = Decimal("0"),
        credits_auth: str = "management",
    ) -> None:
        """``credits_auth``: "management" (current docs) or "any" (older docs let an
        ordinary key read ``GET /credits`` too)."""
        if credits_auth not in ("management", "any"):
            raise ValueError("credits_auth must be 'management' or 'any'")
        self.management_key = management_key
        self.api_key = api_key
        self.credits_auth = credits_auth
        self._initial_models = list(models if models is not None else DEFAULT_MODELS)
        self._initial_credits = (Decimal(total_credits), Decimal(total_usage))
        self.faults = FaultInjector(control_prefix=CONTROL_PREFIX)
        self.models: list[Model] = []
        self.keys: dict[str, Key] = {}  # by hash, in creation order
        self.account_key: Key | None = None
        self.total_credits = Decimal(0)
        self.total_usage = Decimal(0)
        self.requests = RequestLog(CONTROL_PREFIX)
        self.chat = ChatSettings()
        self.generations: dict[str, Generation] = {}
        self._release = asyncio.Event()
        self.reset()
        self.app = self._build_app()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        self.models = [Model.from_spec(spec) for spec in self._initial_models]
        self.keys = {}
        self.account_key = Key(key=self.api_key, name="account api key") if self.api_key else None
        self.total_credits, self.total_usage = self._initial_credits
        self.requests.clear()
        self.faults.clear()
        self.chat = ChatSettings()
        self.generations = {}
        self._release = asyncio.Event()
        self.faults.hits = 0

    def _live_key(self, key_hash: str) -> Key:
        key = self.keys.get(key_hash)
        if key is None or key.deleted:
            raise ApiError(404, "Resource not found")
        return key

    def _key_by_plaintext(self, token: str) -> Key | None:
        if self.account_key is not None and token == self.account_key.key:
            return self.account_key
        key = self.keys.get(hashlib.sha256(token.encode()).hexdigest())
        return None if key is None or key.deleted else key

    # ------------------------------------------------------------------- auth
    @staticmethod
    def _bearer(request: web.Request) -> str | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        return token if scheme.lower() == "bearer" and token else None

    def _require_management(self, request: web.Request) -> None:
        token = self._bearer(request)
        if token is None:
            raise ApiError(401, "No auth credentials found")
        if secrets.compare_digest(token, self.management_key):
            return
        if self._key_by_plaintext(token) is not None:
            raise ApiError(403, "Only management keys can perform this operation")
        raise ApiError(401, "Invalid credentials")

    def _require_inference_key(self, request: web.Request) -> Key:
        token = self._bearer(request)
        if token is None:
            raise ApiError(401, "No auth credentials found")
        if secrets.compare_digest(token, self.management_key):
            raise ApiError(403, "Management keys cannot be used for inference")
        key = self._key_by_plaintext(token)
        if key is None:
            raise ApiError(401, "Invalid credentials")
        if key.disabled:
            raise ApiError(401, "API key is disabled")
        if key.expired():
            raise ApiError(401, "API key has expired")
        return key

    # ------------------------------------------------------------------- app
    def _build_app(self) -> web.Application:
        app = web.Application(
            middlewares=[self.requests.middleware, self.faults.middleware, self._error_middleware]
        )
        r = app.router
        r.add_get(f"{API_PREFIX}/models", self.get_models)
        r.add_post(f"{API_PREFIX}/keys", self.create_key)
        r.add_get(f"{API_PREFIX}/keys", self.list_keys)
        r.add_get(f"{API_PREFIX}/keys/{{hash}}", self.get_key)
        r.add_patch(f"{API_PREFIX}/keys/{{hash}}", self.patch_key)
        r.add_delete(f"{API_PREFIX}/keys/{{hash}}", self.delete_key)
        r.add_get(f"{API_PREFIX}/key", self.current_key)
        r.add_get(f"{API_PREFIX}/credits", self.get_credits)
        r.add_post(f"{API_PREFIX}/credits/coinbase", self.coinbase)
        r.add_post(f"{API_PREFIX}/chat/completions", self.chat_completions)
        r.add_get(f"{API_PREFIX}/generation", self.get_generation)
        r.add_route("*", f"{API_PREFIX}/{{tail:.*}}", self.not_found)

        r.add_post(f"{CONTROL_PREFIX}/credits", self.control_set_credits)
        r.add_get(f"{CONTROL_PREFIX}/credits", self.control_credits)
        r.add_post(f"{CONTROL_PREFIX}/keys/{{hash}}/spend", self.control_spend)
        r.add_get(f"{CONTROL_PREFIX}/keys", self.control_keys)
        r.add_post(f"{CONTROL_PREFIX}/models", self.control_models)
        r.add_post(f"{CONTROL_PREFIX}/reset", self.control_reset)
        r.add_post(f"{CONTROL_PREFIX}/chat", self.control_chat)
        r.add_post(f"{CONTROL_PREFIX}/chat/release", self.control_chat_release)
        r.add_get(f"{CONTROL_PREFIX}/generations", self.control_generations)
        self.faults.install_control_routes(app)
        self.requests.install_control_routes(app)
        return app

    @web.middleware
    async def _error_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return exc.response()
        except web.HTTPException as exc:
            if request.path.startswith(CONTROL_PREFIX):
                raise
            return ApiError(exc.status, exc.reason).response()

    # ------------------------------------------------------------- API routes
    async def get_models(self, request: web.Request) -> web.Response:
        # Public: OpenRouter serves the catalogue without a key.
        return json_response({"data": [model.to_api() for model in self.models]})

    async def create_key(self, request: web.Request) -> web.Response:
        self._require_management(request)
        body = await json_object(request)
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ApiError(400, "name is required and must be a non-empty string")
        key = Key.new(name)
        limit = body.get("limit")
        key.limit = None if limit is None else parse_amount(limit, "limit")
        key.limit_reset = parse_limit_reset(body.get("limit_reset"))
        key.include_byok_in_limit = bool(optional_bool(body, "include_byok_in_limit"))
        expires_at = body.get("expires_at")
        if expires_at is not None:
            if not isinstance(expires_at, str):
                raise ApiError(400, "expires_at must be an ISO 8601 string")
            try:
                datetime.fromisoformat(expires_at)
            except ValueError as exc:
                raise ApiError(400, "expires_at must be an ISO 8601 string") from exc
            key.expires_at = expires_at
        self.keys[key.hash] = key
        # The plaintext appears in this answer only; OpenRouter never shows it again.
        return json_response({"data": key.to_api(), "key": key.key}, status=201)

    async def list_keys(self, request: web.Request) -> web.Response:
        self._require_management(request)
        try:
            offset = int(request.query.get("offset", "0"))
        except ValueError as exc:
            raise ApiError(400, "offset must be an integer") from exc
        if offset < 0:
            raise ApiError(400, "offset must be non-negative")
        include_disabled = request.query.get("include_disabled", "false").lower()
        if include_disabled not in ("true", "false"):
            raise ApiError(400, "include_disabled must be true or false")
        live = [
            key
            for key in self.keys.values()
            if not key.deleted and (include_disabled == "true" or not key.disabled)
        ]
        page = live[offset : offset + KEYS_PAGE_SIZE]
        return json_response({"data": [key.to_api() for key in page]})

    async def get_key(self, request: web.Request) -> web.Response:
        self._require_management(request)
        return json_response({"data": self._live_key(request.match_info["hash"]).to_api()})

    async def patch_key(self, request: web.Request) -> web.Response:
        self._require_management(request)
        key = self._live_key(request.match_info["hash"])
        body = await json_object(request)
        # Validate everything first so a bad field changes nothing.
        changes: dict[str, Any] = {}
        if "name" in body:
            if not isinstance(body["name"], str) or not body["name"].strip():
                raise ApiError(400, "name must be a non-empty string")
            changes["name"] = body["name"]
        if "disabled" in body:
            if not isinstance(body["disabled"], bool):
                raise ApiError(400, "disabled must be a boolean")
            changes["disabled"] = body["disabled"]
        if "limit" in body:
            limit = body["limit"]
            changes["limit"] = None if limit is None else parse_amount(limit, "limit")
        if "limit_reset" in body:
            changes["limit_reset"] = parse_limit_reset(body["limit_reset"])
        if "include_byok_in_limit" in body:
            if not isinstance(body["include_byok_in_limit"], bool):
                raise ApiError(400, "include_byok_in_limit must be a boolean")
            changes["include_byok_in_limit"] = body["include_byok_in_limit"]
        for name, value in changes.items():
            setattr(key, name, value)
        key.updated_at = now_iso()
        return json_response({"data": key.to_api()})

    async def delete_key(self, request: web.Request) -> web.Response:
        self._require_management(request)
        self._live_key(request.match_info["hash"]).deleted = True
        return json_response({"deleted": True})

    async def current_key(self, request: web.Request) -> web.Response:
        token = self._bearer(request)
        if token is not None and secrets.compare_digest(token, self.management_key):
            data: dict[str, Any] = {
                "label": f"sk-or-v1-{self.management_key[-4:]}",
                "limit": None,
                "limit_remaining": None,
                "limit_reset": None,
                "usage": self.total_usage,
                "usage_daily": Decimal(0),
                "usage_weekly": Decimal(0),
                "usage_monthly": Decimal(0),
                "is_free_tier": False,
                "is_management_key": True,
            }
            return json_response({"data": data})
        key = self._require_inference_key(request)
        data = {
            "label": key.label,
            "limit": key.limit,
            "limit_remaining": key.limit_remaining,
            "limit_reset": key.limit_reset,
            "usage": key.usage,
            "usage_daily": key.usage_daily,
            "usage_weekly": key.usage_weekly,
            "usage_monthly": key.usage_monthly,
            "include_byok_in_limit": key.include_byok_in_limit,
            "is_free_tier": False,
            "is_management_key": False,
            "expires_at": key.expires_at,
        }
        return json_response({"data": data})

    async def get_credits(self, request: web.Request) -> web.Response:
        if self.credits_auth == "any":
            token = self._bearer(request)
            if token is None or not (
                secrets.compare_digest(token, self.management_key)
                or self._key_by_plaintext(token) is not None
            ):
                raise ApiError(
                    401, "No auth credentials found" if token is None else "Invalid credentials"
                )
        else:
            self._require_management(request)
        return json_response(self._credits_payload())

    async def coinbase(self, request: web.Request) -> web.Response:
        # The crypto top-up endpoint was removed; top-ups are web-only now.
        raise ApiError(
            410,
            "The Coinbase Commerce credits API has been removed. "
            "Please purchase credits on https://openrouter.ai/settings/credits",
        )

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        key = self._require_inference_key(request)
        body = await json_object(request)
        model_id = body.get("model")
        if not isinstance(model_id, str) or not model_id:
            raise ApiError(400, "model is required")
        model = next((m for m in self.models if m.id == model_id), None)
        if model is None:
            raise ApiError(400, f"{model_id} is not a valid model ID")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "messages must be a non-empty array")
        max_tokens = body.get("max_tokens", DEFAULT_MAX_TOKENS)
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ApiError(400, "max_tokens must be a positive integer")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise ApiError(400, "stream must be a boolean")

        served = model
        if model.completion < 0:  # a router: bill as the priciest model it could pick
            priced = [m for m in self.models if m.completion >= 0]
            if not priced:
                raise ApiError(503, "No model available for routing")
            served = max(priced, key=lambda m: m.completion)
        prompt = prompt_tokens(messages)
        # Like OpenRouter, refuse up front when the worst case (the whole prompt and
        # max_tokens of completion) does not fit what the key or the account has left.
        worst = served.prompt * prompt + served.completion * max_tokens
        remaining = key.limit_remaining
        if remaining is not None and remaining < worst:
            period = key.limit_reset or "total"
            raise ApiError(
                402,
                f"Key limit exceeded ({period} limit)",
                {"limit_source": "openrouter_key_limit"},
            )
        if self.total_credits - self.total_usage < worst:
            raise ApiError(
                402,
                "Insufficient credits. Add more using https://openrouter.ai/credits",
                {"limit_source": "openrouter_credits"},
            )
        answer = fake_answer(messages)
        finish = "stop"
        if count_tokens(answer) > max_tokens:
            answer, finish = answer[: max_tokens * 4 - 4], "length"
        generation_id = f"gen-{int(time.time())}-{secrets.token_hex(10)}"
        if stream:
            return await self._stream(request, key, served, generation_id, prompt, answer, finish)
        cost = self._bill(key, served, generation_id, prompt, answer, finish, streamed=False)
        completion = count_tokens(answer)
        return json_response(
            {
                "id": generation_id,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": served.id,
                "provider": "Emulator",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer},
                        "finish_reason": finish,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                    "cost": cost,
                },
            }
        )

    def _bill(
        self,
        key: Key,
        model: Model,
        generation_id: str,
        prompt: int,
        answer: str,
        finish: str,
        *,
        streamed: bool,
    ) -> Decimal:
        completion = count_tokens(answer) if answer else 0
        cost = model.prompt * prompt + model.completion * completion
        key.add_usage(cost)
        self.total_usage += cost
        self.generations[generation_id] = Generation(
            id=generation_id,
            model=model.id,
            key_hash=key.hash,
            tokens_prompt=prompt,
            tokens_completion=completion,
            total_cost=cost,
            finish_reason=finish,
            streamed=streamed,
        )
        return cost

    async def _stream(
        self,
        request: web.Request,
        key: Key,
        model: Model,
        generation_id: str,
        prompt: int,
        answer: str,
        finish: str,
    ) -> web.StreamResponse:
        """Server-sent events as OpenRouter sends them: a keep-alive comment, one chunk
        per piece of the answer, a last chunk with the finish reason, one with ``usage``
        (with ``cost``) and ``data: [DONE]``. A client that hangs up mid-answer is
        billed for what was generated until then (OpenRouter cancels the generation)."""
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        created = int(time.time())

        def chunk(delta: dict[str, Any], reason: str | None, **extra: Any) -> bytes:
            payload = {
                "id": generation_id,
                "provider": "Emulator",
                "model": model.id,
                "object": "chat.completion.chunk",
                "created": created,
                "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
                **extra,
            }
            return b"data: " + dumps(payload).encode() + b"\n\n"

        sent = ""
        settings = self.chat
        try:
            await response.write(b": OPENROUTER PROCESSING\n\n")
            for index, piece in enumerate(answer_chunks(answer)):
                if settings.error_after is not None and index >= settings.error_after:
                    error = {"code": 502, "message": "Provider returned error"}
                    await response.write(chunk({"content": ""}, "error", error=error))
                    self._bill(key, model, generation_id, prompt, sent, "error", streamed=True)
                    return response
                if settings.hold_after is not None and index == settings.hold_after:
                    await self._hold(request)
                if settings.delay:
                    await asyncio.sleep(settings.delay)
                if request.transport is None or request.transport.is_closing():
                    raise ConnectionResetError
                delta: dict[str, Any] = {"role": "assistant", "content": piece}
                await response.write(chunk(delta, None))
                sent += piece
            await response.write(chunk({"role": "assistant", "content": ""}, finish))
            cost = self._bill(key, model, generation_id, prompt, sent, finish, streamed=True)
            completion = count_tokens(sent)
            usage = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "cost": cost,
            }
            payload = {
                "id": generation_id,
                "provider": "Emulator",
                "model": model.id,
                "object": "chat.completion.chunk",
                "created": created,
                "choices": [],
                "usage": usage,
            }
            await response.write(b"data: " + dumps(payload).encode() + b"\n\n")
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            if generation_id not in self.generations:
                self._bill(key, model, generation_id, prompt, sent, "cancelled", streamed=True)
            raise
        return response

    async def _hold(self, request: web.Request) -> None:
        """Wait for ``/control/chat/release``, noticing a client that hung up meanwhile."""
        while not self._release.is_set():
            if request.transport is None or request.transport.is_closing():
                raise ConnectionResetError
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._release.wait(), 0.02)

    async def get_generation(self, request: web.Request) -> web.Response:
        key = self._require_inference_key(request)
        generation = self.generations.get(request.query.get("id", ""))
        if generation is None or generation.key_hash != key.hash:
            raise ApiError(404, "Generation not found")
        return json_response({"data": generation.to_api()})

    async def not_found(self, request: web.Request) -> web.Response:
        raise ApiError(404, "Resource not found")

    # --------------------------------------------------------- control routes
    def _credits_payload(self) -> dict[str, Any]:
        return {"data": {"total_credits": self.total_credits, "total_usage": self.total_usage}}

    async def control_set_credits(self, request: web.Request) -> web.Response:
        body = await json_object(request)
        if body.get("total_credits") is not None:
            self.total_credits = parse_amount(body["total_credits"], "total_credits")
        if body.get("total_usage") is not None:
            self.total_usage = parse_amount(body["total_usage"], "total_usage")
        return json_response(self._credits_payload())

    async def control_credits(self, request: web.Request) -> web.Response:
        return json_response(self._credits_payload())

    async def control_spend(self, request: web.Request) -> web.Response:
        key = self._live_key(request.match_info["hash"])
        body = await json_object(request)
        # Negative amounts are allowed: a test may want to undo usage.
        amount = parse_amount(body.get("amount"), "amount", allow_negative=True)
        periods = {
            name: None
            if body.get(name) is None
            else parse_amount(body[name], name, allow_negative=True)
            for name in ("daily", "weekly", "monthly")
        }
        key.add_usage(amount, **periods)
        self.total_usage += amount
        return json_response({"data": key.to_api()})

    async def control_keys(self, request: web.Request) -> web.Response:
        rows = [
            {**key.to_api(), "key": key.key, "deleted": key.deleted} for key in self.keys.values()
        ]
        return json_response({"data": rows})

    async def control_models(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = loads(raw)
        except ValueError as exc:
            raise ApiError(400, f"Invalid JSON: {exc}") from exc
        specs = body.get("models", body.get("data")) if isinstance(body, dict) else body
        if not isinstance(specs, list):
            raise ApiError(400, "expected a list of models")
        self.models = [Model.from_spec(spec) for spec in specs]
        return json_response({"data": [model.to_api() for model in self.models]})

    async def control_chat(self, request: web.Request) -> web.Response:
        body = await json_object(request)
        delay = body.get("delay", 0)
        if isinstance(delay, bool) or not isinstance(delay, int | Decimal) or delay < 0:
            raise ApiError(400, "delay must be a non-negative number")
        counts: dict[str, int | None] = {}
        for name in ("hold_after", "error_after"):
            value = body.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ApiError(400, f"{name} must be an integer or null")
            counts[name] = value
        self.chat = ChatSettings(delay=float(delay), **counts)
        self._release = asyncio.Event()
        return json_response({"ok": True})

    async def control_chat_release(self, request: web.Request) -> web.Response:
        self._release.set()
        return json_response({"ok": True})

    async def control_generations(self, request: web.Request) -> web.Response:
        return json_response({"data": [g.to_api() for g in self.generations.values()]})

    async def control_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return json_response({"ok": True})
