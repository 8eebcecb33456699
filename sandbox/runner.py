"""Start every emulator on loopback and build the bot's settings pointing at them.

Used by ``run.py --sandbox``, the demo and the tests, so all three run the same setup.
"""

from __future__ import annotations

import secrets
import socket
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from bot.settings import Settings, load_settings
from sandbox.common import LOOPBACK, Served
from sandbox.cryptopay import CryptoPayEmulator
from sandbox.kryptoexpress import KryptoExpressEmulator
from sandbox.openrouter import OpenRouterEmulator
from sandbox.telegram import TelegramEmulator
from sandbox.telegram_control import TelegramControl
from services.vault import KeyVault

BOT_TOKEN = "123456789:SANDBOX-bot-token-not-real"
MANAGEMENT_KEY = "sk-or-v1-sandbox-management-key"
KRYPTO_API_KEY = "sandbox-kryptoexpress-api-key"
CRYPTO_PAY_TOKEN = "12345:AAsandbox-crypto-pay-token"
ADMIN_CHAT_ID = -1001000000001
ADMIN_ID = 1000
# `run.py --sandbox` offers both rails, KryptoExpress asked first (as in production), so
# an asset only Crypto Pay takes (TON, ETH …) gets a Crypto Pay invoice. The tests'
# default stays KryptoExpress alone: a test that wants both asks for them.
SANDBOX_PAYMENT_PROVIDERS = ["kryptoexpress", "cryptopay"]


def free_port() -> int:
    """A loopback port nothing listens on now (the callback URL must be known upfront)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


@dataclass
class Sandbox:
    telegram: TelegramEmulator
    openrouter: OpenRouterEmulator
    kryptoexpress: KryptoExpressEmulator
    cryptopay: CryptoPayEmulator
    served: list[Served] = field(default_factory=list)
    callback_secret: str = field(default_factory=lambda: secrets.token_hex(24))

    @property
    def telegram_url(self) -> str:
        return self.served[0].url

    @property
    def openrouter_url(self) -> str:
        return self.served[1].url

    @property
    def kryptoexpress_url(self) -> str:
        return self.served[2].url

    @property
    def cryptopay_url(self) -> str:
        return self.served[3].url

    async def stop(self) -> None:
        for server in reversed(self.served):
            await server.stop()

    def settings(self, database_url: str, **overrides: Any) -> Settings:
        """Settings for a bot wired to these emulators; nothing read from the environment
        can point it elsewhere (explicit values win over env and .env)."""
        settings = sandbox_settings(self.urls(), self.callback_secret, database_url, **overrides)
        # Crypto Pay posts to the one webhook URL its app has (the operator sets it in
        # @CryptoBot); here the emulator's app is pointed at this bot.
        self.cryptopay.webhook_url = f"{settings.public_base_url}/payments/cryptopay"
        return settings

    def urls(self) -> dict[str, str]:
        return {
            "telegram": self.telegram_url,
            "openrouter": self.openrouter_url,
            "kryptoexpress": self.kryptoexpress_url,
            "cryptopay": self.cryptopay_url,
        }


def sandbox_settings(
    urls: dict[str, str], callback_secret: str, database_url: str, **overrides: Any
) -> Settings:
    """Settings for a bot wired to emulators at ``urls`` (``Sandbox.urls()``), which may
    run in another process (the update benchmark keeps them out of the bot's)."""
    return load_settings(**sandbox_setting_values(urls, callback_secret, database_url, **overrides))


def sandbox_setting_values(
    urls: dict[str, str], callback_secret: str, database_url: str, **overrides: Any
) -> dict[str, Any]:
    """The values behind ``sandbox_settings`` (plain JSON: a process that must not import
    the emulators builds its settings from them)."""
    web_port = overrides.pop("web_port", None) or free_port()
    values: dict[str, Any] = {
        "bot_token": BOT_TOKEN,
        "telegram_api_base": urls["telegram"],
        "telegram_mode": "polling",
        "admin_chat_id": ADMIN_CHAT_ID,
        "admin_ids": [ADMIN_ID],
        "database_url": database_url,
        "redis_url": None,
        "openrouter_base_url": f"{urls['openrouter']}/api/v1",
        "openrouter_management_key": MANAGEMENT_KEY,
        "openrouter_api_key": None,
        "krypto_express_api_url": f"{urls['kryptoexpress']}/api",
        "krypto_express_api_key": KRYPTO_API_KEY,
        "krypto_express_callback_secret": callback_secret,
        "crypto_pay_api_url": f"{urls['cryptopay']}/api",
        "crypto_pay_token": CRYPTO_PAY_TOKEN,
        "payment_providers": ["kryptoexpress"],
        "public_base_url": f"http://{LOOPBACK}:{web_port}",
        "web_host": LOOPBACK,
        "web_port": web_port,
        "encryption_key": KeyVault.generate_key(),
        "sandbox": True,
    }
    values.update(overrides)
    return values


async def start_sandbox(
    *,
    callback_retry_delays: tuple[float, ...] = (0, 2, 4, 8, 16),
    total_credits: Decimal = Decimal("100"),
) -> Sandbox:
    sandbox = Sandbox(
        telegram=TelegramEmulator(BOT_TOKEN),
        openrouter=OpenRouterEmulator(MANAGEMENT_KEY, total_credits=total_credits),
        kryptoexpress=KryptoExpressEmulator(
            KRYPTO_API_KEY, callback_retry_delays=callback_retry_delays
        ),
        cryptopay=CryptoPayEmulator(CRYPTO_PAY_TOKEN, webhook_retry_delays=callback_retry_delays),
    )
    apps = (sandbox.telegram, sandbox.openrouter, sandbox.kryptoexpress, sandbox.cryptopay)
    for app in (emulator.app for emulator in apps):
        server = Served(app)
        await server.start()
        sandbox.served.append(server)
    # The operator's admin group exists before the bot writes to it.
    async with TelegramControl(sandbox.telegram_url) as control:
        await control.register_chat(ADMIN_CHAT_ID, type="supergroup", title="AI Token Bot admins")
    return sandbox


def temp_sqlite_url(directory: Path) -> str:
    return f"sqlite+aiosqlite:///{directory / 'bot.db'}"
