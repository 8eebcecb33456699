"""The application: settings → engine → clients → services → bot/dispatcher → web → scheduler.

``BotApp(settings)`` only builds objects; ``start()`` does the I/O (migrate, listen,
poll, schedule) and ``stop()`` undoes it in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiogram import Bot, Dispatcher
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.enums import ParseMode
from aiogram.fsm.storage.base import BaseStorage
from aiogram.fsm.storage.memory import MemoryStorage
from aiogram.webhook.aiohttp_server import SimpleRequestHandler
from aiohttp import web

from bot.middlewares import (
    KeepResponseTypes,
    LateCallbackAnswers,
    LogContextMiddleware,
    TelegramWatch,
    UserContextMiddleware,
)
from bot.profile import BotProfile
from bot.settings import ConfigError, Settings
from core.callbacks import AdminFundsCb, AdminOrderCb
from core.metrics import Metrics
from db.engine import PoolSize, create_engine, read_session_factory, session_factory
from db.migrate import upgrade_to_head
from handlers import routers
from processing.admin_ops import AdminOps
from processing.admin_reports import AdminReports
from processing.alerts import BuyerAlerts
from processing.backup import SqliteBackup, sqlite_path
from processing.fulfilment import Fulfilment
from processing.job_health import JobHealth
from processing.joblock import JobLock
from processing.observe import OpsRoutes
from processing.outbox import OutboxSender, SendLimits
from processing.outbox.shared import SharedBudget, budget_prefix
from processing.payments import AITokenPaymentProcessor
from processing.readiness import Readiness
from processing.scheduler import JobIntervals, build_scheduler, job_table
from processing.web import CallbackRoutes, hide_server_software
from services.admin_chat import AdminChat
from services.admin_ledger import AdminLedger
from services.broadcast import BroadcastService
from services.chat import ChatService, ChatSettings
from services.http import observe_errors
from services.notify import Notifier
from services.openrouter import ModelCatalog, OpenRouterClient
from services.openrouter_chat import OpenRouterChat
from services.orders import OrderService, PaymentGateway
from services.payments.health import ProviderHealth
from services.payments.registry import build_providers
from services.preferences import PreferencesService
from services.pricing import AITokenService, PricingRules
from services.quota import QuotaService
from services.users import UserCache, UserService
from services.vault import KeyVault

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/telegram/webhook"


def _secret(value: object) -> str | None:
    getter = getattr(value, "get_secret_value", None)
    return getter() if getter else None


class BotApp:
    def __init__(
        self, settings: Settings, *, intervals: JobIntervals | None = None, outbox_idle: float = 0.5
    ) -> None:
        self.settings = settings
        s = settings
        # One registry per bot instance: several bots may run in one process (tests).
        self.metrics = Metrics()
        self.pool = PoolSize(
            s.database_pool_size, s.database_pool_overflow, s.database_pool_timeout_seconds
        )
        self.engine = create_engine(s.database_url, pool=self.pool)
        # Bursts (callbacks, deliveries) queue in the bot, never at the pool.
        self.admission = self.pool.admission()
        self.sessions = session_factory(self.engine)
        self.read_sessions = read_session_factory(self.engine)
        self.vault = KeyVault(_secret(s.encryption_key) or "")

        self.openrouter = OpenRouterClient(
            s.openrouter_base_url,
            _secret(s.openrouter_management_key) or "",
            api_key=_secret(s.openrouter_api_key),
        )
        self.catalog = ModelCatalog(self.openrouter, s.models)
        self.pricing = AITokenService(
            PricingRules(
                markup_percent=s.markup_percent,
                min_order_usd=s.min_order_usd,
                max_order_usd=s.max_order_usd,
                min_tokens=s.min_tokens,
                package_prices_usd=tuple(s.package_prices_usd),
                token_packages=tuple(s.token_packages),
            )
        )
        self.providers = build_providers(s, s.payment_providers, s.callback_url)
        self.provider_health = ProviderHealth(
            threshold=s.provider_failure_threshold, cooldown=float(s.provider_cooldown_seconds)
        )
        self.gateway = PaymentGateway(list(self.providers.values()), self.provider_health)
        self.admin_chat = AdminChat(self.sessions, s.admin_chat_id)
        self.notifier = Notifier(
            self.admin_chat,
            s.admin_language,
            order_button=lambda order_id: AdminOrderCb(order_id=order_id).pack(),
            recheck_button=AdminFundsCb(action="recheck").pack(),
            topics=s.admin_topics,
        )
        # Replicas (they share Redis) do not see each other's writes to a buyer's row, so
        # the per-process buyer cache is only on where this process is the only one.
        self.users = UserService(
            self.sessions,
            self.catalog,
            self.pricing,
            UserCache(ttl=0 if s.redis_url else 300.0),
        )
        self.orders = OrderService(
            self.sessions,
            self.catalog,
            self.pricing,
            self.gateway,
            default_model=s.default_model,
            quote_ttl=timedelta(seconds=s.quote_ttl_seconds),
            notifier=self.notifier,
        )
        self.fulfilment = Fulfilment(
            self.sessions,
            self.openrouter,
            self.vault,
            self.notifier,
            lease=timedelta(seconds=s.fulfilment_lease_seconds),
            funds_lease=timedelta(seconds=s.funds_lease_seconds),
            reads=self.read_sessions,
            funds_recheck=timedelta(seconds=s.funds_recheck_seconds),
            funds_remeasure=timedelta(seconds=s.funds_remeasure_seconds),
            funds_ttl=float(s.funds_balance_ttl_seconds),
            metrics=self.metrics,
            concurrency=self.admission.deliveries,
        )
        self.processor = AITokenPaymentProcessor(
            self.sessions,
            self.providers,
            self.notifier,
            on_paid=self.fulfilment.kick,
            stale_new=timedelta(seconds=s.stale_order_seconds),
            check_every=timedelta(seconds=s.check_payment_throttle_seconds),
            metrics=self.metrics,
        )
        self.quota = QuotaService(
            self.sessions,
            self.openrouter,
            self.catalog,
            s.default_model,
            cache_seconds=float(s.quota_cache_seconds),
        )
        self.preferences = PreferencesService(self.sessions)
        self.chat_client = OpenRouterChat(s.openrouter_base_url)
        self.chat = ChatService(
            self.sessions,
            self.chat_client,
            self.vault,
            ChatSettings(
                enabled=s.chat_enabled,
                models=s.chat_allowed_models,
                max_tokens=s.chat_max_tokens,
                history_turns=s.chat_history_turns,
                history_tokens=s.chat_history_tokens,
                timeout=float(s.chat_timeout_seconds),
                rate_per_minute=s.chat_rate_per_minute,
            ),
            self.metrics,
        )
        ledger = AdminLedger(self.sessions, self.notifier)
        # The one admin object the handlers get; the reports share its balance.
        self.admin = AdminOps(
            self.sessions,
            ledger,
            self.fulfilment,
            self.openrouter,
            self.providers,
            self.notifier,
            provider_health=self.provider_health,
        )
        self.reports = AdminReports(
            self.sessions,
            ledger,
            self.admin,
            self.notifier,
            timezone=s.timezone,
            report_time=s.daily_report_time,
            weekly_day=s.weekly_report_day,
        )
        self.alerts = BuyerAlerts(
            self.sessions,
            self.openrouter,
            self.notifier,
            reminder_before=timedelta(minutes=s.reminder_minutes_before_expiry),
            timezone=s.timezone,
        )

        self.bot = Bot(
            token=_secret(s.bot_token) or "",
            session=AiohttpSession(api=TelegramAPIServer.from_base(s.telegram_api_base)),
            default=DefaultBotProperties(parse_mode=ParseMode.HTML),
        )
        self.profile = BotProfile(self.bot, self.admin_chat)
        self.dp = Dispatcher(
            storage=self._storage(),
            settings=s,
            users=self.users,
            orders=self.orders,
            processor=self.processor,
            quota=self.quota,
            preferences=self.preferences,
            chat=self.chat,
            admin=self.admin,
            admin_chat=self.admin_chat,
        )
        self.bot.session.middleware(TelegramWatch(self.metrics))
        self.bot.session.middleware(LateCallbackAnswers())
        self.bot.session.middleware(KeepResponseTypes())
        self.dp.update.outer_middleware(LogContextMiddleware())
        self.dp.update.outer_middleware(UserContextMiddleware(self.users))
        self.dp.include_routers(*routers())
        # The update types some handler uses, asked for in polling and webhook mode alike:
        # Telegram then sends exactly what the bot handles (my_chat_member included). A
        # webhook set without the list would keep whatever list an earlier setWebhook gave.
        self.allowed_updates = self.dp.resolve_used_update_types()

        self._redis = self._redis_client()
        shared = None
        self.job_lock: JobLock | None = None
        if self._redis is not None:
            # One budget and one set of job claims per bot token: its replicas share them.
            prefix = budget_prefix(_secret(s.bot_token) or "")
            shared = SharedBudget(self._redis, prefix, SendLimits())
            self.job_lock = JobLock(self._redis, prefix)
        self.outbox = OutboxSender(
            self.sessions,
            self.bot,
            self.vault,
            self.notifier,
            shared=shared,
            forget_user=self.users.cache.forget,
        )
        self.bot.session.middleware(self.outbox.direct_sends())
        self.fulfilment.wake = self.outbox.wake
        self.broadcasts = BroadcastService(self.sessions, on_queued=self.outbox.wake)
        self.dp["broadcasts"] = self.broadcasts
        self.dp["outbox"] = self.outbox
        self._outbox_idle = outbox_idle
        self.web = web.Application(client_max_size=1024 * 1024)
        hide_server_software(self.web)
        CallbackRoutes(
            self.processor,
            self.providers,
            self.sessions,
            self.notifier,
            self.metrics,
            concurrency=self.admission.callbacks,
        ).install(self.web)
        if s.telegram_mode == "webhook":
            SimpleRequestHandler(
                dispatcher=self.dp,
                bot=self.bot,
                secret_token=_secret(s.telegram_webhook_secret),
            ).register(self.web, path=WEBHOOK_PATH)
        self.scheduler = build_scheduler(
            job_table(
                processor=self.processor,
                fulfilment=self.fulfilment,
                catalog=self.catalog,
                notifier=self.notifier,
                sessions=self.sessions,
                alerts=self.alerts,
                reports=self.reports,
                intervals=intervals
                or JobIntervals(
                    payment_poll=float(s.payment_poll_seconds),
                    expiry=float(s.expiry_check_seconds),
                    fulfilment=float(s.fulfilment_retry_seconds),
                    prices=float(s.price_refresh_seconds),
                    funds_recheck=float(s.funds_recheck_seconds),
                ),
                quota_seconds=float(s.quota_check_seconds),
                summary_time=s.daily_summary_time,
                backup=self._backup(),
            ),
            timezone=s.timezone,
            on_success=self.metrics.job_succeeded,
            lock=self.job_lock,
            health=JobHealth(self.notifier, self.sessions),
        )
        for client in (self.openrouter, *self.providers.values()):
            observe_errors(client, self.metrics.external_error)
        OpsRoutes(
            self.metrics,
            self.sessions,
            Readiness(
                self.sessions,
                scheduler_running=lambda: bool(self.scheduler.running),
                telegram=self.metrics.telegram,
                redis_ping=self._ping_redis if self._redis is not None else None,
                outbox_stuck=timedelta(seconds=s.ready_outbox_stuck_seconds),
                telegram_grace=timedelta(seconds=s.ready_telegram_grace_seconds),
                timeout=s.ready_check_timeout_seconds,
            ),
            token=_secret(s.metrics_token),
            timeout=s.ready_check_timeout_seconds,
        ).install(self.web)
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._polling: asyncio.Task[None] | None = None
        self.web_port: int | None = None
        self._stopped = False

    def _backup(self) -> SqliteBackup | None:
        s = self.settings
        if not s.backup_dir:
            return None
        database = sqlite_path(s.database_url)
        if database is None:
            log.warning("backup_dir_ignored reason=not_sqlite hint=back PostgreSQL up with pg_dump")
            return None
        return SqliteBackup(database, Path(s.backup_dir), s.backup_keep)

    def _redis_client(self) -> Redis | None:
        """For the readiness PING, the replicas' shared Telegram budget and job locks
        (the FSM storage keeps its own connection)."""
        if not self.settings.redis_url:
            return None
        from redis.asyncio import Redis

        return Redis.from_url(self.settings.redis_url)

    async def _ping_redis(self) -> None:
        assert self._redis is not None
        await self._redis.ping()

    def _storage(self) -> BaseStorage:
        if self.settings.redis_url:
            from aiogram.fsm.storage.redis import RedisStorage

            return RedisStorage.from_url(self.settings.redis_url)
        return MemoryStorage()

    # ------------------------------------------------------------ lifecycle
    async def start(self, *, polling: bool = True) -> None:
        if not self.settings.redis_url and self.engine.dialect.name == "postgresql":
            # A shared database invites a second replica; without Redis it would keep
            # its own FSM, Telegram budget and scheduler (docs/deploy.md, "replicas").
            log.warning(
                "replicas_unsafe_without_redis: run ONE replica on this database or set "
                "REDIS_URL (buyers' dialog state, Telegram's send limits and scheduled "
                "jobs are per process without it)"
            )
        await upgrade_to_head(self.engine)
        await self.admin_chat.load()
        self._runner = web.AppRunner(self.web, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.web_host, self.settings.web_port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.web_port = sockets[0].getsockname()[1] if sockets else self.settings.web_port
        self.scheduler.start()
        self._spawn(self.outbox.run_forever(idle=self._outbox_idle))
        await self.profile.apply()
        if self.settings.telegram_mode == "webhook":
            if not self.settings.telegram_webhook_url:
                # setWebhook with an empty url REMOVES the webhook, silently: refuse.
                raise ConfigError("TELEGRAM_WEBHOOK_URL is required in webhook mode")
            await self.bot.set_webhook(
                self.settings.telegram_webhook_url,
                secret_token=_secret(self.settings.telegram_webhook_secret),
                allowed_updates=self.allowed_updates,
                drop_pending_updates=False,
            )
        elif polling:
            self._polling = asyncio.create_task(
                self.dp.start_polling(
                    self.bot,
                    handle_signals=False,
                    close_bot_session=False,
                    polling_timeout=20,
                    allowed_updates=self.allowed_updates,
                )
            )
        # Anything paid but not delivered before a restart is picked up now.
        self._spawn(self.fulfilment.run_due())
        log.info(
            "app_started web=%s:%s mode=%s",
            self.settings.web_host,
            self.web_port,
            self.settings.telegram_mode,
        )

    async def stop(self) -> None:
        """Undo ``start``; safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        if self._polling is not None:
            with contextlib.suppress(RuntimeError):  # polling already stopped
                await self.dp.stop_polling()
            self._polling.cancel()
            await asyncio.gather(self._polling, return_exceptions=True)
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        # Sends in flight finish and are recorded, so a restart repeats none of them.
        await self.outbox.stop()
        await self.fulfilment.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.bot.session.close()
        await self.dp.storage.close()
        if self._redis is not None:
            await self._redis.aclose()
        await self.openrouter.aclose()
        await self.chat_client.aclose()
        for provider in self.providers.values():
            await provider.aclose()
        await self.engine.dispose()

    # -------------------------------------------------------------- helpers
    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task: asyncio.Task[Any] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
