"""End-to-end harness: emulators + the real app (dispatcher, DB, HTTP server, scheduler).

Everything talks over loopback HTTP. The database is SQLite in a temp dir, or the
PostgreSQL named by TEST_DATABASE_URL (wiped before each test).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from bot.app import BotApp
from core.clock import utcnow
from db.engine import wipe_postgres
from db.models import ApiKey, Order, OrderEvent, OutboxMessage
from processing.scheduler import JobIntervals
from sandbox.provider_control import KryptoExpressControl, OpenRouterControl
from sandbox.runner import ADMIN_CHAT_ID, Sandbox, start_sandbox, temp_sqlite_url
from sandbox.telegram_control import TelegramControl

# Jobs are off unless a test turns them on: each test proves one path.
IDLE = 3600.0


async def redis_url(db: int) -> str:
    """A Redis database for one test file, emptied first; the test is skipped (with the
    reason shown) where no Redis runs, except in CI, which must run it."""
    import pytest
    from redis.asyncio import Redis

    url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/") + f"/{db}"
    client = Redis.from_url(url)
    try:
        await client.flushdb()
    except Exception as exc:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"Redis not reachable at {url} ({type(exc).__name__}): SKIPPED")
    finally:
        await client.aclose()
    return url


def database_url(tmp_path: Path) -> str:
    return os.environ.get("TEST_DATABASE_URL") or temp_sqlite_url(tmp_path)


@dataclass
class Env:
    sandbox: Sandbox
    app: BotApp
    tg: TelegramControl
    kx: KryptoExpressControl
    orc: OpenRouterControl

    @property
    def admin_chat(self) -> int:
        return ADMIN_CHAT_ID

    # ------------------------------------------------------------- database
    async def orders(self, user_id: int | None = None) -> list[Order]:
        async with self.app.sessions() as session:
            query = select(Order).order_by(Order.id)
            if user_id is not None:
                query = query.where(Order.user_id == user_id)
            return list((await session.execute(query)).scalars())

    async def order(self, order_id: int) -> Order:
        async with self.app.sessions() as session:
            order = await session.get(Order, order_id)
            assert order is not None
            return order

    async def events(self, order_id: int) -> list[OrderEvent]:
        async with self.app.sessions() as session:
            rows = await session.execute(
                select(OrderEvent).where(OrderEvent.order_id == order_id).order_by(OrderEvent.id)
            )
            return list(rows.scalars())

    async def api_key(self, user_id: int) -> ApiKey | None:
        async with self.app.sessions() as session:
            return (
                await session.execute(select(ApiKey).where(ApiKey.user_id == user_id))
            ).scalar_one_or_none()

    async def outbox(self) -> list[OutboxMessage]:
        async with self.app.sessions() as session:
            return list(
                (await session.execute(select(OutboxMessage).order_by(OutboxMessage.id))).scalars()
            )

    async def wait_status(self, order_id: int, *statuses: str, timeout: float = 10.0) -> Order:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            order = await self.order(order_id)
            if order.status in statuses:
                return order
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"order {order_id} is {order.status}, not {statuses}")
            await asyncio.sleep(0.05)

    async def update_order(self, order_id: int, **values: Any) -> None:
        """Time travel and crash simulation: set columns of an order directly."""
        async with self.app.sessions() as session, session.begin():
            await session.execute(update(Order).where(Order.id == order_id).values(**values))

    async def age_order(self, order_id: int) -> None:
        """Make the invoice overdue, as if its two hours had passed."""
        await self.update_order(order_id, expires_at=utcnow() - timedelta(seconds=1))

    # -------------------------------------------------------------- buying
    async def start_chat(self, user_id: int, language: str = "en") -> None:
        await self.tg.send_text(user_id, "/start", language_code=language)
        await self.tg.wait_for(
            user_id,
            lambda m: (
                bool(m["from_bot"]) and _has_button(m, "🤖 AI Tokens" if language == "en" else None)
            ),
        )

    async def open_packages(self, user_id: int) -> dict[str, Any]:
        await self.tg.press(user_id, "🤖 AI Tokens")
        return await self.tg.wait_for(user_id, lambda m: _has_button(m, "✏️ Custom amount"))

    async def choose_package(self, user_id: int, name: str = "Starter") -> None:
        await self.tg.press(user_id, name, match="prefix")
        await self.tg.wait_for(user_id, lambda m: _has_button(m, "USDT"))

    async def quote_and_confirm(self, user_id: int, asset: str = "USDT") -> int:
        await self.tg.press(user_id, asset)
        await self.tg.wait_for(user_id, lambda m: _has_button(m, "✅ Confirm order"))
        before = max((m["message_id"] for m in await self.tg.messages(user_id)), default=0)
        await self.tg.press(user_id, "✅ Confirm order")
        screen = await self.tg.wait_for(
            user_id,
            lambda m: (
                m["message_id"] > before
                and bool(m.get("photo"))
                and _has_button(m, "🔄 Check payment")
            ),
        )
        match = re.search(r"Order #(\d+)", screen.get("caption") or "")
        assert match, screen
        return int(match.group(1))

    async def buy(
        self, user_id: int, *, asset: str = "USDT", package: str = "Starter", new_chat: bool = True
    ) -> int:
        """/start → AI Tokens → package → asset → Confirm; returns the order id."""
        if new_chat:
            await self.start_chat(user_id)
        await self.open_packages(user_id)
        await self.choose_package(user_id, package)
        return await self.quote_and_confirm(user_id, asset)

    async def pay(self, order_id: int, **options: Any) -> dict[str, Any]:
        order = await self.order(order_id)
        assert order.provider_payment_id is not None
        return await self.kx.pay(order.provider_payment_id, **options)

    async def delivered_message(
        self, user_id: int, order_id: int, timeout: float = 15.0
    ) -> dict[str, Any]:
        return await self.tg.wait_for_text(user_id, f"Order #{order_id} delivered", timeout=timeout)


def _has_button(message: dict[str, Any], text: str | None) -> bool:
    if message.get("deleted"):
        return False
    buttons = [b["text"] for row in message.get("buttons") or [] for b in row]
    return bool(buttons) if text is None else text in buttons


@asynccontextmanager
async def running_env(
    tmp_path: Path,
    *,
    intervals: JobIntervals | None = None,
    fulfilment: dict[str, Any] | None = None,
    configure: Callable[[Sandbox], Any] | None = None,
    **settings: Any,
) -> AsyncIterator[Env]:
    sandbox = await start_sandbox(callback_retry_delays=(0, 0.2, 0.4, 0.8, 1.6))
    url = database_url(tmp_path)
    if url.startswith("postgresql"):
        await wipe_postgres(url)
    app: BotApp | None = None
    tg = TelegramControl(sandbox.telegram_url)
    kx = KryptoExpressControl(sandbox.kryptoexpress_url)
    orc = OpenRouterControl(sandbox.openrouter_url)
    try:
        if configure is not None:
            await configure(sandbox)
        app = BotApp(
            sandbox.settings(url, **settings),
            intervals=intervals
            or JobIntervals(
                payment_poll=IDLE, expiry=IDLE, fulfilment=IDLE, prices=IDLE, funds_recheck=IDLE
            ),
            outbox_idle=0.1,
        )
        for name, value in (fulfilment or {}).items():
            setattr(app.fulfilment, name, value)
        await app.start()
        yield Env(sandbox, app, tg, kx, orc)
    finally:
        if app is not None:
            await app.stop()
        await tg.aclose()
        await kx.aclose()
        await orc.aclose()
        await sandbox.stop()
