"""OpenRouter emulator's records and input rules: the model catalogue, keys, error envelope.

Amounts are ``Decimal``; a float never reaches them (bodies are parsed with ``loads``).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from aiohttp import web

from sandbox.common import json_response, now_iso, plain_number, read_json_object

LIMIT_RESETS = ("daily", "weekly", "monthly")

# id, name, prompt price, completion price (USD per token, as OpenRouter writes them), context
DEFAULT_MODELS: list[dict[str, Any]] = [
    {
        "id": "anthropic/claude-3-sonnet",
        "name": "Anthropic: Claude 3 Sonnet",
        "prompt": "0.000003",
        "completion": "0.000015",
        "context_length": 200000,
    },
    {
        "id": "openai/gpt-4o-mini",
        "name": "OpenAI: GPT-4o-mini",
        "prompt": "0.00000015",
        "completion": "0.0000006",
        "context_length": 128000,
    },
    {
        "id": "meta-llama/llama-3.1-8b-instruct",
        "name": "Meta: Llama 3.1 8B Instruct",
        "prompt": "0.00000002",
        "completion": "0.00000005",
        "context_length": 131072,
    },
    {
        "id": "google/gemini-flash-1.5",
        "name": "Google: Gemini Flash 1.5",
        "prompt": "0.000000075",
        "completion": "0.0000003",
        "context_length": 1000000,
    },
    {
        "id": "mistralai/mistral-7b-instruct:free",
        "name": "Mistral: Mistral 7B Instruct (free)",
        "prompt": "0",
        "completion": "0",
        "context_length": 32768,
    },
    {
        # A router: its price depends on the model it picks, written as "-1".
        "id": "openrouter/auto",
        "name": "Auto Router",
        "prompt": "-1",
        "completion": "-1",
        "context_length": 2000000,
    },
]


class ApiError(Exception):
    """An OpenRouter error answer: HTTP status = ``code``, body = the error envelope."""

    def __init__(self, code: int, message: str, metadata: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.metadata = metadata

    def response(self) -> web.Response:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.metadata is not None:
            error["metadata"] = self.metadata
        return json_response({"error": error}, status=self.code)


def parse_amount(value: Any, field_name: str, *, allow_negative: bool = False) -> Decimal:
    """A JSON number (int or Decimal from ``loads``) as Decimal; bools and strings refused."""
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise ApiError(400, f"{field_name} must be a number")
    amount = Decimal(value)
    if not amount.is_finite() or (amount < 0 and not allow_negative):
        raise ApiError(400, f"{field_name} must be a non-negative number")
    return amount


def parse_price(value: Any, field_name: str) -> Decimal:
    """A catalogue price: decimal string or JSON number ("-1" = variable)."""
    if isinstance(value, bool):
        raise ApiError(400, f"{field_name} must be a decimal string or number")
    try:
        price = Decimal(value) if isinstance(value, int | Decimal | str) else None
    except InvalidOperation:
        price = None
    if price is None or not price.is_finite():
        raise ApiError(400, f"{field_name} must be a decimal string or number")
    return price


def optional_bool(body: dict[str, Any], name: str) -> bool | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise ApiError(400, f"{name} must be a boolean")
    return value


def parse_limit_reset(value: Any) -> str | None:
    if value is None or value in LIMIT_RESETS:
        return value  # type: ignore[no-any-return]
    raise ApiError(400, "limit_reset must be one of daily, weekly, monthly or null")


async def json_object(request: web.Request, *, required: bool = True) -> dict[str, Any]:
    return await read_json_object(
        request,
        lambda message: ApiError(400, message),
        required=required,
        missing="Request body must be a JSON object",
        invalid_json="Invalid JSON",
    )


@dataclass
class Model:
    id: str
    name: str
    prompt: Decimal
    completion: Decimal
    context_length: int = 128000
    created: int = field(default_factory=lambda: int(time.time()) - 86400 * 365)

    @classmethod
    def from_spec(cls, spec: Any) -> Model:
        """From ``{id, name?, prompt, completion}`` or a full API object with ``pricing``."""
        if not isinstance(spec, dict) or not isinstance(spec.get("id"), str):
            raise ApiError(400, "each model needs a string id")
        nested = spec.get("pricing")
        pricing: dict[str, Any] = nested if isinstance(nested, dict) else spec
        context = spec.get("context_length", 128000)
        return cls(
            id=spec["id"],
            name=str(spec.get("name") or spec["id"]),
            prompt=parse_price(pricing.get("prompt", "0"), "prompt"),
            completion=parse_price(pricing.get("completion", "0"), "completion"),
            context_length=context if isinstance(context, int) else 128000,
        )

    def to_api(self) -> dict[str, Any]:
        # Prices are decimal *strings*, USD per token: that is how OpenRouter writes them.
        return {
            "id": self.id,
            "canonical_slug": self.id,
            "name": self.name,
            "created": self.created,
            "description": f"{self.name} (emulated)",
            "context_length": self.context_length,
            "architecture": {
                "modality": "text->text",
                "input_modalities": ["text"],
                "output_modalities": ["text"],
                "tokenizer": "Other",
                "instruct_type": None,
            },
            "pricing": {
                "prompt": plain_number(self.prompt),
                "completion": plain_number(self.completion),
                "request": "0",
                "image": "0",
            },
            "top_provider": {
                "context_length": self.context_length,
                "max_completion_tokens": None,
                "is_moderated": False,
            },
            "per_request_limits": None,
            "supported_parameters": ["max_tokens", "temperature", "top_p", "stop"],
        }


@dataclass
class Key:
    key: str  # plaintext "sk-or-v1-<64 hex>", shown by the API only at creation
    name: str
    limit: Decimal | None = None
    limit_reset: str | None = None
    include_byok_in_limit: bool = False
    expires_at: str | None = None
    disabled: bool = False
    deleted: bool = False
    created_at: str = field(default_factory=now_iso)
    updated_at: str | None = None
    usage: Decimal = Decimal(0)
    usage_daily: Decimal = Decimal(0)
    usage_weekly: Decimal = Decimal(0)
    usage_monthly: Decimal = Decimal(0)

    @classmethod
    def new(cls, name: str) -> Key:
        return cls(key="sk-or-v1-" + secrets.token_hex(32), name=name)

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.key.encode()).hexdigest()

    @property
    def label(self) -> str:
        secret = self.key.removeprefix("sk-or-v1-")
        return f"sk-or-v1-{secret[:3]}...{secret[-4:]}"

    def period_usage(self) -> Decimal:
        """The usage the limit is counted against: the reset period's, or all of it."""
        if self.limit_reset == "daily":
            return self.usage_daily
        if self.limit_reset == "weekly":
            return self.usage_weekly
        if self.limit_reset == "monthly":
            return self.usage_monthly
        return self.usage

    @property
    def limit_remaining(self) -> Decimal | None:
        # Not clamped at zero: a test may push usage past the limit on purpose.
        return None if self.limit is None else self.limit - self.period_usage()

    def expired(self) -> bool:
        if self.expires_at is None:
            return False
        try:
            moment = datetime.fromisoformat(self.expires_at)
        except ValueError:
            return False
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment <= datetime.now(UTC)

    def add_usage(
        self,
        amount: Decimal,
        *,
        daily: Decimal | None = None,
        weekly: Decimal | None = None,
        monthly: Decimal | None = None,
    ) -> None:
        self.usage += amount
        self.usage_daily += amount if daily is None else daily
        self.usage_weekly += amount if weekly is None else weekly
        self.usage_monthly += amount if monthly is None else monthly

    def to_api(self) -> dict[str, Any]:
        zero = Decimal(0)
        return {
            "hash": self.hash,
            "name": self.name,
            "label": self.label,
            "disabled": self.disabled,
            "limit": self.limit,
            "limit_remaining": self.limit_remaining,
            "limit_reset": self.limit_reset,
            "include_byok_in_limit": self.include_byok_in_limit,
            "usage": self.usage,
            "usage_daily": self.usage_daily,
            "usage_weekly": self.usage_weekly,
            "usage_monthly": self.usage_monthly,
            "byok_usage": zero,
            "byok_usage_daily": zero,
            "byok_usage_weekly": zero,
            "byok_usage_monthly": zero,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "expires_at": self.expires_at,
        }


# ----------------------------------------------------------------- the fake chat model
# A deterministic stand-in for a language model, so tests can predict every answer:
#   "echo: <text>"  → answers <text> verbatim (Markdown, "<", "&" and all);
#   "long: <n>"     → answers n numbered words (for answers longer than one message);
#   anything else   → "You said: <text>" plus one line naming the turn.
# Tokens are counted as OpenRouter's tokenizers roughly do for English: ~4 characters each.


def count_tokens(text: str) -> int:
    return len(text) // 4 + 1


def message_text(message: Any) -> str:
    """The text of one chat message (``content`` may be a string or a list of parts)."""
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def fake_answer(messages: list[Any]) -> str:
    users = [message_text(m) for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    last = users[-1] if users else ""
    if last.startswith("echo:"):
        return last.removeprefix("echo:").removeprefix(" ") or "…"
    if last.startswith("long:"):
        try:
            words = max(1, min(int(last.removeprefix("long:").strip()), 20000))
        except ValueError:
            words = 10
        return " ".join(f"word{i}" for i in range(1, words + 1))
    return f"You said: {last}\n\nThis is turn **{len(users)}** of our conversation."


def answer_chunks(answer: str) -> list[str]:
    """The answer as the stream sends it: a word (with its trailing space) per chunk."""
    return re.findall(r"\S+\s*|\s+", answer) or [answer]


def prompt_tokens(messages: list[Any]) -> int:
    return sum(count_tokens(message_text(m)) for m in messages)


@dataclass
class ChatSettings:
    """Steering for chat completions (``POST /control/chat``): a pause between stream
    chunks, a hold after N chunks until ``/control/chat/release``, an in-stream error
    after N chunks. ``hold_after`` lets a test press "stop" mid-answer without a timer."""

    delay: float = 0.0
    hold_after: int | None = None
    error_after: int | None = None


@dataclass
class Generation:
    """What ``GET /generation?id=`` reports for one completion."""

    id: str
    model: str
    key_hash: str
    tokens_prompt: int
    tokens_completion: int
    total_cost: Decimal
    finish_reason: str
    streamed: bool
    created_at: str = field(default_factory=now_iso)

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model,
            "created_at": self.created_at,
            "streamed": self.streamed,
            "tokens_prompt": self.tokens_prompt,
            "tokens_completion": self.tokens_completion,
            "native_tokens_prompt": self.tokens_prompt,
            "native_tokens_completion": self.tokens_completion,
            "total_cost": self.total_cost,
            "usage": self.total_cost,
            "finish_reason": self.finish_reason,
            "provider_name": "Emulator",
        }
