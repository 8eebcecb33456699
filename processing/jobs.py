"""APScheduler jobs (SPEC §6). Each is safe to run twice and after downtime.

coalesce=True folds missed runs into one, max_instances=1 keeps a slow run from
overlapping itself, and every job works from the database state (compare-and-set),
so a repeated or concurrent run changes nothing twice.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.util import undefined
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from processing.backup import SqliteBackup
from processing.fulfilment import Fulfilment
from processing.payments import AITokenPaymentProcessor
from services.errors import ExternalError
from services.notify import Notifier
from services.openrouter import ModelCatalog

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobIntervals:
    payment_poll: float = 30.0
    expiry: float = 30.0
    fulfilment: float = 10.0
    prices: float = 600.0
    funds_recheck: float = 30.0


def _guarded(name: str, job: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        try:
            await job()
        except ExternalError as exc:
            log.warning("job_external_error job=%s error=%s", name, exc)
        except Exception:
            log.exception("job_failed job=%s", name)

    return run


def build_scheduler(
    *,
    processor: AITokenPaymentProcessor,
    fulfilment: Fulfilment,
    catalog: ModelCatalog,
    notifier: Notifier,
    sessions: async_sessionmaker[AsyncSession],
    intervals: JobIntervals,
    timezone: str = "UTC",
    backup: SqliteBackup | None = None,
) -> AsyncIOScheduler:
    scheduler = AsyncIOScheduler(
        timezone=timezone,
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 60},
    )

    async def refresh_prices() -> None:
        missing = await catalog.refresh()
        if missing:
            async with sessions() as session, session.begin():
                for model_id in missing:
                    await notifier.admin(
                        session,
                        "admin.model_missing",
                        dedupe=f"model-missing:{model_id}",
                        model=model_id,
                    )

    jobs: list[tuple[str, Callable[[], Awaitable[Any]], float]] = [
        ("payment_poll", processor.poll_open, intervals.payment_poll),
        ("expire_orders", processor.expire_overdue, intervals.expiry),
        ("fulfil_due", fulfilment.run_due, intervals.fulfilment),
        ("refresh_prices", refresh_prices, intervals.prices),
        # Orders waiting for funds resume within this long of the operator's top-up.
        ("funds_recheck", fulfilment.recheck_due, intervals.funds_recheck),
    ]
    for name, job, seconds in jobs:
        # Prices are fetched at start too, so a missing model is reported at once.
        first = datetime.now(UTC) if name == "refresh_prices" else None
        scheduler.add_job(
            _guarded(name, job),
            "interval",
            seconds=seconds,
            id=name,
            name=name,
            replace_existing=True,
            next_run_time=first if first else undefined,
        )
    if backup is not None:
        scheduler.add_job(
            _guarded("sqlite_backup", backup.run),
            "interval",
            days=1,
            id="sqlite_backup",
            name="sqlite_backup",
            replace_existing=True,
            next_run_time=backup.next_run(),
        )
    return scheduler
