"""Configuration of SPEC §7 (bot/settings.py): names, parsing, one-line errors."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from bot.settings import ConfigError, Settings, load_settings
from services.payments.registry import build_providers

REPO = Path(__file__).resolve().parents[1]

# Every variable Settings reads; cleared for each test so the ambient environment
# (a developer's shell, CI's DATABASE_URL...) cannot leak in.
ENV_NAMES = sorted(name.upper() for name in Settings.model_fields)

PRODUCTION = {
    "BOT_TOKEN": "123:abc",
    "ADMIN_CHAT_ID": "-1001234567890",
    "OPENROUTER_MANAGEMENT_KEY": "sk-or-v1-management",
    "ENCRYPTION_KEY": "a" * 43 + "=",
    "PUBLIC_BASE_URL": "https://bot.example.com",
    "KRYPTO_EXPRESS_API_KEY": "kx-key",
    "KRYPTO_EXPRESS_CALLBACK_SECRET": "kx-secret",
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    # No .env in the working directory: only what a test sets is read.
    monkeypatch.chdir(tmp_path)


def set_env(monkeypatch: pytest.MonkeyPatch, values: dict[str, str]) -> None:
    for name, value in values.items():
        monkeypatch.setenv(name, value)


# ----------------------------------------------------------------------- parsing
def test_defaults_match_the_spec() -> None:
    s = load_settings()
    assert s.telegram_api_base == "https://api.telegram.org"
    assert s.telegram_mode == "polling"
    assert s.admin_ids == []
    assert s.database_url == "sqlite+aiosqlite:///data/bot.db"
    assert s.openrouter_base_url == "https://openrouter.ai/api/v1"
    assert s.krypto_express_api_url == "https://kryptoexpress.pro/api"
    assert s.payment_providers == ["kryptoexpress"]  # cryptopay joins once built (issue 12)
    assert (s.web_host, s.web_port) == ("127.0.0.1", 8080)
    assert s.markup_percent == Decimal("20")
    assert s.max_order_usd == Decimal("20")
    assert s.min_order_usd == Decimal("1")
    assert s.min_tokens == 100
    assert s.package_prices_usd == [Decimal(2), Decimal(5), Decimal(10), Decimal(20)]
    assert s.token_packages == []
    assert s.default_model == "anthropic/claude-3-sonnet"
    assert s.default_model in s.models
    assert s.payment_poll_seconds == 30
    assert s.timezone == "UTC"
    assert s.bot_token is None


def test_comma_lists_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(
        monkeypatch,
        {
            "ADMIN_IDS": "1, 2",
            "PACKAGE_PRICES_USD": "2,5,10,20",
            "TOKEN_PACKAGES": "",
            "MODELS": " openai/gpt-4o-mini , anthropic/claude-3-sonnet ,",
            "PAYMENT_PROVIDERS": "cryptopay,kryptoexpress",
        },
    )
    s = load_settings()
    assert s.admin_ids == [1, 2]
    assert s.package_prices_usd == [Decimal("2"), Decimal("5"), Decimal("10"), Decimal("20")]
    assert all(isinstance(p, Decimal) for p in s.package_prices_usd)
    assert s.token_packages == []
    assert s.models == ["openai/gpt-4o-mini", "anthropic/claude-3-sonnet"]
    assert s.payment_providers == ["cryptopay", "kryptoexpress"]  # fallback order kept


def test_decimal_settings_stay_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(
        monkeypatch,
        {"MARKUP_PERCENT": "12.5", "MAX_ORDER_USD": "19.99", "PACKAGE_PRICES_USD": "0.1,2.35"},
    )
    s = load_settings()
    assert s.markup_percent == Decimal("12.5")
    assert s.markup_rate == Decimal("0.125")
    assert s.max_order_usd == Decimal("19.99")
    assert s.package_prices_usd == [Decimal("0.1"), Decimal("2.35")]


def test_fixed_token_packages_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKEN_PACKAGES", "1000,5000,10000,20000")
    assert load_settings().token_packages == [1000, 5000, 10000, 20000]


def test_env_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(
        monkeypatch,
        {"BOT_TOKEN": "42:xyz", "ADMIN_CHAT_ID": "-100500", "WEB_PORT": "9090", "MIN_TOKENS": "7"},
    )
    s = load_settings()
    assert s.bot_token is not None
    assert s.bot_token.get_secret_value() == "42:xyz"
    assert "42:xyz" not in repr(s)  # secrets are SecretStr
    assert s.admin_chat_id == -100500
    assert s.web_port == 9090
    assert s.min_tokens == 7


def test_explicit_kwargs_win_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, {"WEB_PORT": "9090", "ADMIN_IDS": "1,2", "MARKUP_PERCENT": "30"})
    s = load_settings(web_port=7070, admin_ids="5", markup_percent=Decimal("10"))
    assert s.web_port == 7070
    assert s.admin_ids == [5]
    assert s.markup_percent == Decimal("10")


def test_dotenv_in_the_working_directory_is_read_and_env_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("WEB_PORT=6060\nMIN_TOKENS=50\n", encoding="utf-8")
    monkeypatch.setenv("MIN_TOKENS", "60")
    s = load_settings()
    assert s.web_port == 6060
    assert s.min_tokens == 60


# -------------------------------------------------------------------- bad values
@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MARKUP_PERCENT", "abc"),
        ("TIMEZONE", "Mars/Base"),
        ("PAYMENT_PROVIDERS", "paypal"),
        ("PAYMENT_PROVIDERS", "kryptoexpress,paypal"),
        ("PAYMENT_PROVIDERS", ","),
        ("TOKEN_PACKAGES", "1000,-5"),
        ("WEB_PORT", "99999"),
        ("WEB_PORT", "eighty"),
        ("ADMIN_IDS", "1, two"),
        ("ADMIN_CHAT_ID", "@admins"),
        ("PACKAGE_PRICES_USD", "2,-5"),
        ("PACKAGE_PRICES_USD", "2,five"),
        ("TOKEN_PACKAGES", "1000,lots"),
        ("TELEGRAM_MODE", "carrier-pigeon"),
        ("MIN_TOKENS", "0"),
        ("MAX_ORDER_USD", "NaN"),
    ],
)
def test_malformed_value_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as error:
        load_settings()
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(name + " "), message


def test_admin_language_is_an_offered_language(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().admin_language == "en"
    monkeypatch.setenv("ADMIN_LANGUAGE", "RU")
    assert load_settings().admin_language == "ru"
    monkeypatch.setenv("ADMIN_LANGUAGE", "pt-br")
    assert load_settings().admin_language == "pt-BR"
    # A language the bot does not speak would mix in English.
    for value in ("de", "xx"):
        monkeypatch.setenv("ADMIN_LANGUAGE", value)
        with pytest.raises(ConfigError) as error:
            load_settings()
        assert str(error.value).startswith("ADMIN_LANGUAGE "), error.value


def test_malformed_kwarg_is_reported_the_same_way() -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(web_port=-1)
    assert str(error.value).startswith("WEB_PORT ")


# ------------------------------------------------------------- production checks
@pytest.mark.parametrize("missing", list(PRODUCTION))
def test_require_for_production_names_the_first_missing_setting(
    monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    set_env(monkeypatch, {k: v for k, v in PRODUCTION.items() if k != missing})
    with pytest.raises(ConfigError) as error:
        load_settings().require_for_production()
    assert str(error.value) == f"{missing} is required but not set"


def test_nothing_set_lists_every_missing_setting_one_line_each() -> None:
    with pytest.raises(ConfigError) as error:
        load_settings().require_for_production()
    assert error.value.problems == [f"{name} is required but not set" for name in PRODUCTION]


def test_empty_secret_counts_as_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, {**PRODUCTION, "BOT_TOKEN": ""})
    with pytest.raises(ConfigError) as error:
        load_settings().require_for_production()
    assert str(error.value) == "BOT_TOKEN is required but not set"


def test_complete_production_settings_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, PRODUCTION)
    load_settings().require_for_production()


def test_kryptoexpress_keys_not_required_without_that_provider(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    values = {k: v for k, v in PRODUCTION.items() if not k.startswith("KRYPTO_EXPRESS")}
    set_env(monkeypatch, {**values, "PAYMENT_PROVIDERS": "cryptopay"})
    # Crypto Pay alone: its token is what a real run needs instead.
    with pytest.raises(ConfigError, match="CRYPTO_PAY_TOKEN"):
        load_settings().require_for_production()
    set_env(monkeypatch, {**values, "PAYMENT_PROVIDERS": "cryptopay", "CRYPTO_PAY_TOKEN": "1:A"})
    load_settings().require_for_production()


async def test_configured_but_unusable_providers_are_skipped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    s = load_settings(
        payment_providers="cryptopay,kryptoexpress", public_base_url="https://b.example"
    )
    with caplog.at_level(logging.WARNING, logger="services.payments.registry"):
        assert build_providers(s, s.payment_providers, s.callback_url) == {}
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "provider_skipped provider=cryptopay reason=not_configured"),
        (logging.WARNING, "provider_skipped provider=kryptoexpress reason=not_configured"),
    ]
    s = load_settings(krypto_express_api_key="k", public_base_url="https://b.example")
    providers = build_providers(s, s.payment_providers, s.callback_url)
    assert list(providers) == ["kryptoexpress"]
    await providers["kryptoexpress"].aclose()
    assert s.callback_url("kryptoexpress") == "https://b.example/payments/kryptoexpress"


def test_webhook_mode_requires_its_url_and_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, {**PRODUCTION, "TELEGRAM_MODE": "webhook"})
    with pytest.raises(ConfigError) as error:
        load_settings().require_for_production()
    assert error.value.problems == [
        "TELEGRAM_WEBHOOK_URL is required but not set",
        "TELEGRAM_WEBHOOK_SECRET is required but not set",
    ]
    monkeypatch.setenv("TELEGRAM_WEBHOOK_URL", "https://bot.example.com/tg")
    with pytest.raises(ConfigError) as error:
        load_settings().require_for_production()
    assert str(error.value) == "TELEGRAM_WEBHOOK_SECRET is required but not set"


def test_default_model_must_be_one_of_models(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(
        monkeypatch,
        {**PRODUCTION, "MODELS": "openai/gpt-4o-mini", "DEFAULT_MODEL": "anthropic/claude-3-opus"},
    )
    with pytest.raises(ConfigError) as error:
        load_settings().require_for_production()
    message = str(error.value)
    assert message.startswith("DEFAULT_MODEL ")
    assert "MODELS" in message
    assert "\n" not in message
    monkeypatch.setenv("MODELS", "openai/gpt-4o-mini,anthropic/claude-3-opus")
    load_settings().require_for_production()


def test_min_order_above_max_order_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, {**PRODUCTION, "MIN_ORDER_USD": "25"})
    with pytest.raises(ConfigError) as error:
        load_settings().require_for_production()
    assert str(error.value).startswith("MIN_ORDER_USD ")


# ------------------------------------------------------- honest settings (issue 10)
def test_empty_values_from_env_example_count_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    # .env.example copied as it is: every value left empty.
    (Path.cwd() / ".env").write_text((REPO / ".env.example").read_text())
    s = load_settings()
    assert s.admin_chat_id is None and s.bot_token is None and s.public_base_url is None
    with pytest.raises(ConfigError) as error:
        load_settings(production=True)
    assert error.value.problems == [f"{name} is required but not set" for name in PRODUCTION]
    # The same rule for values passed in code.
    assert load_settings(public_base_url=" ", bot_token="").public_base_url is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PUBLIC_BASE_URL", "bot.example.com"),
        ("PUBLIC_BASE_URL", "ftp://bot.example.com"),
        ("TELEGRAM_WEBHOOK_URL", "https://"),
        ("TELEGRAM_API_BASE", "api.telegram.org"),
        ("DATABASE_URL", "not a url"),
        ("DATABASE_URL", "postgresql://u@h/db"),  # a sync driver: no traceback later
        ("DATABASE_URL", "mysql+aiomysql://u@h/db"),
        ("ENCRYPTION_KEY", "my-secret-passphrase"),
    ],
)
def test_malformed_urls_database_and_key_are_one_line(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    set_env(monkeypatch, {**PRODUCTION, name: value})
    with pytest.raises(ConfigError) as error:
        load_settings(production=True)
    assert len(error.value.problems) == 1, error.value.problems
    assert error.value.problems[0].startswith(f"{name} is malformed: ")
    if name == "ENCRYPTION_KEY":
        assert value not in str(error.value)  # a secret is never echoed


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://bot.example.com/telegram/webhook", True),
        ("http://127.0.0.1:8080/telegram/webhook", True),  # a local Bot API server
        ("http://localhost/telegram/webhook", True),
        ("http://bot.example.com/telegram/webhook", False),
    ],
)
def test_webhook_url_must_be_https_unless_loopback(
    monkeypatch: pytest.MonkeyPatch, url: str, ok: bool
) -> None:
    set_env(
        monkeypatch,
        {**PRODUCTION, "TELEGRAM_MODE": "webhook", "TELEGRAM_WEBHOOK_SECRET": "s"},
    )
    monkeypatch.setenv("TELEGRAM_WEBHOOK_URL", url)
    if ok:
        load_settings(production=True)
        return
    with pytest.raises(ConfigError) as error:
        load_settings(production=True)
    assert error.value.problems == [
        f"TELEGRAM_WEBHOOK_URL must be https:// (Telegram posts only to HTTPS), got {url!r}"
    ]


def test_every_problem_is_listed_in_one_run(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(
        monkeypatch,
        {
            "BOT_TOKEN": "123:abc",
            "ADMIN_CHAT_ID": "minus one",
            "DATABASE_URL": "mysql://x",
            "ENCRYPTION_KEY": "short",
            "TELEGRAM_MODE": "webhook",
            "TELEGRAM_WEBHOOK_URL": "",
            "WEB_PORT": "99999",
        },
    )
    with pytest.raises(ConfigError) as error:
        load_settings(production=True)
    names = [p.split(" ", 1)[0] for p in error.value.problems]
    assert names == [
        "ADMIN_CHAT_ID",
        "DATABASE_URL",
        "WEB_PORT",
        "ENCRYPTION_KEY",
        "OPENROUTER_MANAGEMENT_KEY",
        "PUBLIC_BASE_URL",
        "KRYPTO_EXPRESS_API_KEY",
        "KRYPTO_EXPRESS_CALLBACK_SECRET",
        "TELEGRAM_WEBHOOK_URL",
        "TELEGRAM_WEBHOOK_SECRET",
    ], error.value.problems
    # A malformed setting is named once, as malformed, not also as missing.
    assert "ADMIN_CHAT_ID is malformed" in error.value.problems[0]


# --------------------------------------------------------------------- start-up
def _run_py(
    tmp_path: Path, extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "PYTHONPATH": str(REPO),
        **(extra or {}),
    }
    return subprocess.run(  # noqa: S603 - our own interpreter and script, no shell
        [sys.executable, str(REPO / "run.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_run_py_without_configuration_lists_each_missing_setting(tmp_path: Path) -> None:
    result = _run_py(tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"config error: {name} is required but not set" for name in PRODUCTION
    ]


def test_run_py_with_bad_values_prints_one_line_each_and_no_traceback(tmp_path: Path) -> None:
    # .env.example copied and filled in carelessly: empty webhook URL in webhook mode,
    # a passphrase for ENCRYPTION_KEY, a synchronous database driver.
    (tmp_path / ".env").write_text(
        (REPO / ".env.example").read_text()
        + "\nBOT_TOKEN=123:abc\nADMIN_CHAT_ID=-100123\nTELEGRAM_MODE=webhook\n"
        "TELEGRAM_WEBHOOK_SECRET=s\nOPENROUTER_MANAGEMENT_KEY=k\nPUBLIC_BASE_URL=https://b.example\n"
        "KRYPTO_EXPRESS_API_KEY=k\nKRYPTO_EXPRESS_CALLBACK_SECRET=s\n"
        "ENCRYPTION_KEY=correct horse battery staple\nDATABASE_URL=postgresql://u@db/bot\n"
    )
    result = _run_py(tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert [line.split(" ")[2] for line in lines] == [
        "DATABASE_URL",
        "ENCRYPTION_KEY",
        "TELEGRAM_WEBHOOK_URL",
    ], lines
    assert all(line.startswith("config error: ") for line in lines)
    assert "staple" not in result.stderr


async def test_webhook_mode_without_url_never_calls_set_webhook(tmp_path: Path) -> None:
    # setWebhook with an empty url removes the webhook: the app refuses to start instead.
    from tests.harness import running_env

    with pytest.raises(ConfigError, match="TELEGRAM_WEBHOOK_URL"):
        async with running_env(tmp_path, telegram_mode="webhook", telegram_webhook_url=None):
            pass


# ------------------------------------------------------------------------ leases
@pytest.mark.parametrize("name", ["FULFILMENT_LEASE_SECONDS", "FUNDS_LEASE_SECONDS"])
def test_a_lease_shorter_than_the_worst_openrouter_call_is_refused(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """Issue 9 §8: a lease must outlast one OpenRouter call with all its retries, or a
    stalled holder's PATCH can land after another worker took the buyer (or the funds)."""
    # 30 s was the old minimum: three 10 s attempts, and no room for the back-off.
    monkeypatch.setenv(name, "30")
    with pytest.raises(ConfigError):
        load_settings()
    from services.openrouter import OPENROUTER_WORST_CALL_SECONDS, min_lease_seconds

    minimum = min_lease_seconds()
    # 3 attempts × 10 s, plus the back-off between them, plus the margin.
    assert OPENROUTER_WORST_CALL_SECONDS > 30 and minimum > OPENROUTER_WORST_CALL_SECONDS
    monkeypatch.setenv(name, str(minimum - 1))
    with pytest.raises(ConfigError) as error:
        load_settings()
    message = str(error.value)
    assert "\n" not in message and message.startswith(name + " "), message
    assert str(minimum) in message
    monkeypatch.setenv(name, str(minimum))
    assert getattr(load_settings(), name.lower()) == minimum
