"""Configuration: every name of SPEC §7, read once from the environment / `.env`.

Built once in ``run.py`` and passed down; never imported as a global.
"""

from __future__ import annotations

import ipaddress
from decimal import Decimal
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from locales import DEFAULT_LANGUAGE, LANGUAGES
from services.admin_topics import AlertCategory
from services.config import empty_is_unset, http_url
from services.openrouter import (
    LEASE_MARGIN_SECONDS,
    OPENROUTER_WORST_CALL_SECONDS,
    min_lease_seconds,
)
from services.payments.base import callback_path
from services.payments.registry import (
    DEFAULT_PROVIDERS,
    PROVIDERS,
    PaymentSettings,
    required_settings,
)
from services.vault import parse_keys

# The async drivers the app is built and tested with (db/engine.py).
DATABASE_DRIVERS = ("sqlite+aiosqlite", "postgresql+asyncpg")


class ConfigError(Exception):
    """Missing or malformed settings: one line per problem, each naming its setting."""

    def __init__(self, problems: str | list[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _split(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


CsvInts = Annotated[list[int], NoDecode]
CsvStrs = Annotated[list[str], NoDecode]
CsvDecimals = Annotated[list[Decimal], NoDecode]


class Settings(PaymentSettings):
    """The bot's own settings; each payment provider's come from its module (composed
    through PaymentSettings)."""

    # env_ignore_empty: "NAME=" (as copied from .env.example) means unset, so a required
    # setting left empty is reported missing and an optional one takes its default.
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        env_ignore_empty=True,
    )

    bot_token: SecretStr | None = None
    telegram_api_base: str = "https://api.telegram.org"
    telegram_mode: Literal["polling", "webhook"] = "polling"
    telegram_webhook_url: str | None = None
    telegram_webhook_secret: SecretStr | None = None
    admin_chat_id: int | None = None
    admin_ids: CsvInts = Field(default_factory=list)
    # Forum topics (message_thread_id) of the admin group per alert category
    # (services/admin_topics.py); unset = the group itself.
    admin_topic_payments: int | None = None
    admin_topic_funds: int | None = None
    admin_topic_failures: int | None = None
    admin_topic_security: int | None = None
    admin_topic_reports: int | None = None
    # Language of alerts, reports and admin commands (one of locales.LANGUAGES): the
    # admins read one language whatever their own Telegram app speaks.
    admin_language: str = DEFAULT_LANGUAGE

    database_url: str = "sqlite+aiosqlite:///data/bot.db"
    # The connection pool: connections kept open, extra ones opened under load, and how
    # long a transaction waits for one before it fails. A burst of payment callbacks and
    # deliveries is admitted in proportion to it (db/engine.py Admission), so it never waits
    # that long.
    database_pool_size: int = Field(default=10, ge=1, le=1000)
    database_pool_overflow: int = Field(default=10, ge=0, le=1000)
    database_pool_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    redis_url: str | None = None

    openrouter_base_url: str = "https://openrouter.ai/api/v1"
    openrouter_api_key: SecretStr | None = None
    openrouter_management_key: SecretStr | None = None

    # Fallback order (services/payments/registry.py lists the providers).
    payment_providers: CsvStrs = Field(default_factory=lambda: list(DEFAULT_PROVIDERS))
    # A provider failing invoice creation this many times in a row is skipped (tried
    # last) for PROVIDER_COOLDOWN_SECONDS (services/payments/health.py).
    provider_failure_threshold: int = Field(default=3, ge=1)
    provider_cooldown_seconds: int = Field(default=300, ge=1)

    public_base_url: str | None = None
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=8080, ge=0, le=65535)
    # /metrics and /readyz (processing/observe.py, processing/readiness.py).
    metrics_token: SecretStr | None = None
    # /readyz fails when a buyer's or admin's message has been due this long unsent…
    ready_outbox_stuck_seconds: int = Field(default=300, ge=1)
    # …or Telegram has not answered for this long (polling retries ride out a blip);
    ready_telegram_grace_seconds: int = Field(default=120, ge=1)
    # each check, and the database figures of a /metrics scrape, answer within this.
    ready_check_timeout_seconds: float = Field(default=2.0, gt=0, le=30)

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
    # 🔄 Check payment asks the provider at most once per order per this many seconds,
    # however often (or concurrently) it is tapped; other taps answer from the database.
    check_payment_throttle_seconds: int = Field(default=10, ge=0)
    timezone: str = "UTC"
    encryption_key: SecretStr | None = None

    log_format: Literal["text", "json"] = "text"
    # Daily online backups of a SQLite database (processing/backup.py); unset = none.
    backup_dir: str | None = None
    backup_keep: int = Field(default=7, ge=1)

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
    # Orders waiting for funds resume within this long of the operator's top-up: the
    # balance is re-measured and the waiting orders retried on this cadence.
    funds_recheck_seconds: int = Field(default=30, ge=1)
    # What buyer keys may still spend is kept from our own ledger between full listings
    # of the keys (O(buyers) OpenRouter calls); the list is re-read in the background
    # this often (and whenever the figure is too short for an order). Between listings
    # the figure errs high by what buyers spent since, never low.
    funds_remeasure_seconds: int = Field(default=900, ge=10)
    # A delivery reuses the operator's balance (GET /credits) for this long. 0 (default)
    # reads it before every raise, so usage outside buyers' keys is never missed and no
    # key gets a limit the balance no longer covers; the price is one more OpenRouter
    # call inside the shared funds section per delivery (a slow OpenRouter slows all of
    # them: the two-rail chaos run drained ~1 order/s under faults).
    funds_balance_ttl_seconds: int = Field(default=0, ge=0, le=60)
    # An order still "new" (invoice call never came back) after this is closed.
    stale_order_seconds: int = Field(default=600, ge=30)
    quota_check_seconds: int = Field(default=600, ge=1)
    quota_cache_seconds: int = Field(default=60, ge=0, le=60)
    reminder_minutes_before_expiry: int = Field(default=30, ge=1)
    daily_report_time: str = "09:00"
    weekly_report_day: Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"] = "mon"
    daily_summary_time: str = "20:00"
    # 💬 Chat (issue 16): buyers talk to their model on their own key. CHAT_MODELS are
    # the models the chat may use (empty: the MODELS list); a buyer whose model is not
    # allowed chats with the first allowed one.
    chat_enabled: bool = True
    chat_models: CsvStrs = Field(default_factory=list)
    chat_max_tokens: int = Field(default=1024, ge=1, le=32768)
    # The recent conversation sent with each question: at most this many turns, and
    # within this token budget (≈ 4 characters a token), newest first.
    chat_history_turns: int = Field(default=10, ge=0, le=100)
    chat_history_tokens: int = Field(default=3000, ge=100)
    chat_timeout_seconds: int = Field(default=90, ge=5)
    # Questions per buyer per minute; a second question while one is answered waits.
    chat_rate_per_minute: int = Field(default=10, ge=1)
    # Sandbox-only switch (set by ``run.py --sandbox``): changes nothing in the logic.
    sandbox: bool = False

    @field_validator(
        "admin_ids",
        "payment_providers",
        "package_prices_usd",
        "token_packages",
        "models",
        "chat_models",
        mode="before",
    )
    @classmethod
    def _csv(cls, value: Any) -> Any:
        return _split(value)

    @field_validator(
        "bot_token",
        "telegram_webhook_url",
        "telegram_webhook_secret",
        "redis_url",
        "openrouter_api_key",
        "openrouter_management_key",
        "public_base_url",
        "encryption_key",
        "metrics_token",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # The same rule for values passed in code as for the environment (above).
        return empty_is_unset(value)

    @field_validator(
        "telegram_api_base",
        "telegram_webhook_url",
        "openrouter_base_url",
        "public_base_url",
    )
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else http_url(value.strip())

    @field_validator(
        "admin_topic_payments",
        "admin_topic_funds",
        "admin_topic_failures",
        "admin_topic_security",
        "admin_topic_reports",
    )
    @classmethod
    def _topic(cls, value: int | None) -> int | None:
        # Telegram refuses message_thread_id=1 (the General topic) for sendMessage.
        if value is not None and value <= 1:
            raise ValueError("1 is the General topic: leave it unset to post there")
        return value

    @field_validator("admin_language")
    @classmethod
    def _admin_language(cls, value: str) -> str:
        by_lower = {language.lower(): language for language in LANGUAGES}
        language = by_lower.get(value.strip().lower())
        if language is None:
            raise ValueError(f"must be one of {', '.join(LANGUAGES)}")
        return language

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        try:
            driver = make_url(value).drivername
        except ArgumentError:
            raise ValueError("expected e.g. sqlite+aiosqlite:///data/bot.db") from None
        if driver not in DATABASE_DRIVERS:
            raise ValueError(f"driver {driver!r} is not one of {', '.join(DATABASE_DRIVERS)}")
        return value

    @field_validator("payment_providers")
    @classmethod
    def _known_providers(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError(f"needs at least one provider, e.g. {DEFAULT_PROVIDERS[0]}")
        unknown = [p for p in value if p not in PROVIDERS]
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

    @field_validator("encryption_key")
    @classmethod
    def _fernet_keys(cls, value: SecretStr | None) -> SecretStr | None:
        # Comma-separated, newest first; empty means unset (require_for_production says so).
        if value is not None and value.get_secret_value().strip():
            parse_keys(value.get_secret_value())
        return value

    @property
    def admin_topics(self) -> dict[AlertCategory, int]:
        """The configured forum topic of each alert category (missing: the group)."""
        topics = {
            category: getattr(self, f"admin_topic_{category.value}") for category in AlertCategory
        }
        return {category: thread for category, thread in topics.items() if thread is not None}

    @property
    def chat_allowed_models(self) -> list[str]:
        return list(self.chat_models or self.models)

    @property
    def markup_rate(self) -> Decimal:
        return self.markup_percent / Decimal(100)

    def callback_url(self, provider: str) -> str | None:
        """Where ``provider`` posts its callbacks (None: no PUBLIC_BASE_URL)."""
        if not self.public_base_url:
            return None
        return self.public_base_url.rstrip("/") + callback_path(provider)

    def require_for_production(self) -> None:
        """Raise ConfigError listing every setting a real run lacks or cannot use."""
        problems = self.production_problems()
        if problems:
            raise ConfigError(problems)

    def production_problems(self) -> list[str]:
        """One line per problem, in the order of SPEC §7."""
        problems: list[str] = []
        required: list[tuple[str, object]] = [
            ("BOT_TOKEN", self.bot_token),
            ("ADMIN_CHAT_ID", self.admin_chat_id),
            ("OPENROUTER_MANAGEMENT_KEY", self.openrouter_management_key),
            ("ENCRYPTION_KEY", self.encryption_key),
            ("PUBLIC_BASE_URL", self.public_base_url),
        ]
        required += required_settings(self, self.payment_providers)
        if self.telegram_mode == "webhook":
            required += [
                ("TELEGRAM_WEBHOOK_URL", self.telegram_webhook_url),
                ("TELEGRAM_WEBHOOK_SECRET", self.telegram_webhook_secret),
            ]
        for name, value in required:
            if value is None or (isinstance(value, SecretStr) and not value.get_secret_value()):
                problems.append(f"{name} is required but not set")
        webhook = self.telegram_webhook_url
        if self.telegram_mode == "webhook" and webhook is not None:
            parts = urlsplit(webhook)
            # Telegram posts only to HTTPS; plain http is for a local Bot API server.
            if parts.scheme != "https" and not _is_loopback(parts.hostname or ""):
                problems.append(
                    f"TELEGRAM_WEBHOOK_URL must be https:// (Telegram posts only to HTTPS), "
                    f"got {webhook!r}"
                )
        if self.default_model not in self.models:
            problems.append(f"DEFAULT_MODEL {self.default_model!r} is not one of MODELS")
        if self.min_order_usd > self.max_order_usd:
            problems.append("MIN_ORDER_USD is larger than MAX_ORDER_USD")
        return problems


def load_settings(*, production: bool = False, **overrides: Any) -> Settings:
    """Build settings, or raise ConfigError listing every problem, one line each.

    ``production``: also what a real run needs (``production_problems``). The malformed
    values are replaced by their defaults to look for the rest, so one run names all."""
    problems: list[str] = []
    malformed: dict[str, Any] = {}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else ""
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.append(f"{field.upper() or 'settings'} is malformed: {message}")
            if field in Settings.model_fields:
                malformed[field] = Settings.model_fields[field].get_default(
                    call_default_factory=True
                )
        try:
            settings = Settings(**{**overrides, **malformed})
        except ValidationError:
            raise ConfigError(problems) from None
    if production:
        named = {line.split(" ", 1)[0] for line in problems}
        problems += [p for p in settings.production_problems() if p.split(" ", 1)[0] not in named]
    if problems:
        raise ConfigError(problems)
    return settings
