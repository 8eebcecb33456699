"""Configuration: every name of SPEC §7, read once from the environment / `.env`.

Built once in ``run.py`` and passed down; never imported as a global.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from services.openrouter import (
    LEASE_MARGIN_SECONDS,
    OPENROUTER_WORST_CALL_SECONDS,
    min_lease_seconds,
)


class ConfigError(Exception):
    """A missing or malformed setting; the message is one line naming it."""


def _split(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


CsvInts = Annotated[list[int], NoDecode]
CsvStrs = Annotated[list[str], NoDecode]
CsvDecimals = Annotated[list[Decimal], NoDecode]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    bot_token: SecretStr | None = None
    telegram_api_base: str = "https://api.telegram.org"
    telegram_mode: Literal["polling", "webhook"] = "polling"
    telegram_webhook_url: str | None = None
    telegram_webhook_secret: SecretStr | None = None
    admin_chat_id: int | None = None
    admin_ids: CsvInts = Field(default_factory=list)

    database_url: str = "sqlite+aiosqlite:///data/bot.db"
    redis_url: str | None = None

    openrouter_base_url: str = "https://openrouter.ai/api/v1"
    openrouter_api_key: SecretStr | None = None
    openrouter_management_key: SecretStr | None = None

    krypto_express_api_url: str = "https://kryptoexpress.pro/api"
    krypto_express_api_key: SecretStr | None = None
    krypto_express_callback_secret: SecretStr | None = None
    crypto_pay_api_url: str = "https://pay.crypt.bot/api"
    crypto_pay_token: SecretStr | None = None
    payment_providers: CsvStrs = Field(default_factory=lambda: ["kryptoexpress", "cryptopay"])

    public_base_url: str | None = None
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=8080, ge=0, le=65535)

    markup_percent: Decimal = Field(default=Decimal("20"), ge=0, le=1000)
    max_order_usd: Decimal = Field(default=Decimal("20"), gt=0)
    min_order_usd: Decimal = Field(default=Decimal("1"), ge=0)
    min_tokens: int = Field(default=100, ge=1)
    package_prices_usd: CsvDecimals = Field(
        default_factory=lambda: [Decimal("2"), Decimal("5"), Decimal("10"), Decimal("20")]
    )
    token_packages: CsvInts = Field(default_factory=list)
    models: CsvStrs = Field(
        default_factory=lambda: [
            "anthropic/claude-3-sonnet",
            "openai/gpt-4o-mini",
            "meta-llama/llama-3.1-8b-instruct",
        ]
    )
    default_model: str = "anthropic/claude-3-sonnet"

    payment_poll_seconds: int = Field(default=30, ge=1)
    timezone: str = "UTC"
    encryption_key: SecretStr | None = None

    # Not in SPEC §7 but needed to run: how long an unpaid quote stays valid.
    quote_ttl_seconds: int = Field(default=900, ge=30)
    # Schedules of the background jobs (SPEC §6); times are HH:MM in TIMEZONE.
    expiry_check_seconds: int = Field(default=60, ge=1)
    fulfilment_retry_seconds: int = Field(default=15, ge=1)
    price_refresh_seconds: int = Field(default=600, ge=10)
    # Crash recovery (docs/reliability.md): a killed process's claim on a buyer's
    # fulfilment is taken over after this lease. It is re-asserted right before each
    # PATCH, so it must outlast one OpenRouter call with all its retries (checked below).
    fulfilment_lease_seconds: int = 300
    # Raising a key limit holds one lease shared by every replica (the funds ledger);
    # it must outlast one PATCH with its retries too, and a killed holder's lease stalls
    # other deliveries for at most this long.
    funds_lease_seconds: int = 45
    # An order still "new" (invoice call never came back) after this is closed.
    stale_order_seconds: int = Field(default=600, ge=30)
    quota_check_seconds: int = Field(default=600, ge=1)
    quota_cache_seconds: int = Field(default=60, ge=0, le=60)
    reminder_minutes_before_expiry: int = Field(default=30, ge=1)
    daily_report_time: str = "09:00"
    weekly_report_day: Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"] = "mon"
    daily_summary_time: str = "20:00"
    # Sandbox-only switch (set by ``run.py --sandbox``): changes nothing in the logic.
    sandbox: bool = False

    @field_validator(
        "admin_ids",
        "payment_providers",
        "package_prices_usd",
        "token_packages",
        "models",
        mode="before",
    )
    @classmethod
    def _csv(cls, value: Any) -> Any:
        return _split(value)

    @field_validator("payment_providers")
    @classmethod
    def _known_providers(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("needs at least one provider, e.g. kryptoexpress")
        unknown = [p for p in value if p not in {"kryptoexpress", "cryptopay"}]
        if unknown:
            raise ValueError(f"unknown provider(s): {', '.join(unknown)}")
        return value

    @field_validator("token_packages")
    @classmethod
    def _positive_counts(cls, value: list[int]) -> list[int]:
        if any(count <= 0 for count in value):
            raise ValueError("token counts must be positive")
        return sorted(value)

    @field_validator("package_prices_usd")
    @classmethod
    def _positive_prices(cls, value: list[Decimal]) -> list[Decimal]:
        if not value or any(p <= 0 for p in value):
            raise ValueError("needs positive prices, e.g. 2,5,10,20")
        return sorted(value)

    @field_validator("daily_report_time", "daily_summary_time")
    @classmethod
    def _clock_time(cls, value: str) -> str:
        hours, _, minutes = value.partition(":")
        if not (hours.isdigit() and minutes.isdigit() and int(hours) < 24 and int(minutes) < 60):
            raise ValueError(f"expected HH:MM, got {value!r}")
        return f"{int(hours):02d}:{int(minutes):02d}"

    @field_validator("fulfilment_lease_seconds", "funds_lease_seconds")
    @classmethod
    def _outlasts_openrouter(cls, value: int) -> int:
        minimum = min_lease_seconds()
        if value < minimum:
            raise ValueError(
                f"must be at least {minimum} s: one OpenRouter call with its retries can "
                f"take {OPENROUTER_WORST_CALL_SECONDS:.2f} s, plus a "
                f"{LEASE_MARGIN_SECONDS:.0f} s margin"
            )
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @property
    def markup_rate(self) -> Decimal:
        return self.markup_percent / Decimal(100)

    @property
    def callback_url(self) -> str | None:
        if not self.public_base_url:
            return None
        return self.public_base_url.rstrip("/") + "/payments/kryptoexpress"

    def require_for_production(self) -> None:
        """Raise ConfigError naming the first setting a real run cannot do without."""
        required: list[tuple[str, object]] = [
            ("BOT_TOKEN", self.bot_token),
            ("ADMIN_CHAT_ID", self.admin_chat_id),
            ("OPENROUTER_MANAGEMENT_KEY", self.openrouter_management_key),
            ("ENCRYPTION_KEY", self.encryption_key),
            ("PUBLIC_BASE_URL", self.public_base_url),
        ]
        if "kryptoexpress" in self.payment_providers:
            required += [
                ("KRYPTO_EXPRESS_API_KEY", self.krypto_express_api_key),
                ("KRYPTO_EXPRESS_CALLBACK_SECRET", self.krypto_express_callback_secret),
            ]
        if self.telegram_mode == "webhook":
            required += [
                ("TELEGRAM_WEBHOOK_URL", self.telegram_webhook_url),
                ("TELEGRAM_WEBHOOK_SECRET", self.telegram_webhook_secret),
            ]
        for name, value in required:
            if value is None or (isinstance(value, SecretStr) and not value.get_secret_value()):
                raise ConfigError(f"{name} is required but not set")
        if self.default_model not in self.models:
            raise ConfigError(f"DEFAULT_MODEL {self.default_model!r} is not one of MODELS")
        if self.min_order_usd > self.max_order_usd:
            raise ConfigError("MIN_ORDER_USD is larger than MAX_ORDER_USD")


def load_settings(**overrides: Any) -> Settings:
    """Build settings; turn pydantic's report into one line naming the setting."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]).upper() if first["loc"] else "settings"
        raise ConfigError(f"{name} is malformed: {first['msg']}") from None
