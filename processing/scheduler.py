"""Every periodic job (SPEC §6) in one table, registered through one wrapper.

Each job is safe to run twice and after downtime: coalesce=True folds missed runs into
one, max_instances=1 keeps a slow run from overlapping itself, the misfire grace lets a
run delayed by a busy loop or a short outage still happen, and every job works from the
database state (compare-and-set, dedupe keys), so a repeated or concurrent run changes
nothing twice. ``idempotent`` in the table says which jobs that holds for outright; the
backup writes a new file per run (rotation keeps the newest few), so it is merely safe.
Jobs pass ``coalesce`` and ``max_instances`` explicitly as well as through
``JOB_DEFAULTS``, so a row cannot lose them by overriding the defaults.

To add a job: one row in ``job_table``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.util import undefined
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.clock import utcnow
from processing.admin_reports import REPORT_MISFIRE_GRACE, AdminReports
from processing.alerts import SUMMARY_GRACE, BuyerAlerts
from processing.backup import SqliteBackup
from processing.fulfilment import Fulfilment
from processing.job_health import JobHealth
from processing.joblock import JobLock, hold_for
from processing.payments import AITokenPaymentProcessor
from services.errors import ExternalError
from services.notify import Notifier
from services.openrouter import ModelCatalog

log = logging.getLogger(__name__)

# What every job gets unless its row says otherwise.
JOB_DEFAULTS = {"coalesce": True, "max_instances": 1, "misfire_grace_time": 60}


@dataclass(frozen=True)
class JobIntervals:
    payment_poll: float = 30.0
    expiry: float = 30.0  # invoice reminders run on this cadence too
    fulfilment: float = 10.0
    prices: float = 600.0
    funds_recheck: float = 30.0


@dataclass(frozen=True)
class Job:
    name: str
    run: Callable[[], Awaitable[Any]]
    # "interval" / "date" with their arguments in ``when``, or a trigger object (cron).
    trigger: str | BaseTrigger
    when: Mapping[str, Any] = field(default_factory=dict)
    _: KW_ONLY
    idempotent: bool
    misfire_grace: int = 60
    first_run: datetime | None = None  # None: the trigger's own first time
    # Failed runs in a row before the admin group is told (processing/job_health.py):
    # 1 for jobs whose next try is a day or more away.
    alert_after: int = 3


def guarded(
    name: str,
    job: Callable[[], Awaitable[Any]],
    on_success: Callable[[str], None] | None = None,
    *,
    lock: JobLock | None = None,
    hold: float = 0.0,
    health: JobHealth | None = None,
    alert_after: int = 3,
) -> Callable[[], Awaitable[None]]:
    """A failed run is logged and the next one tries again; nothing reaches APScheduler.
    An unreachable service is expected weather (WARNING); anything else is a bug. A run
    that ends without an error is reported to ``on_success`` (/metrics shows its time).
    With a ``lock`` (replicas sharing Redis), a run happens only on the replica that
    claims the job for ``hold`` seconds (processing/joblock.py). ``health`` turns a
    streak of failed runs into an admin alert, and its end into another."""

    async def run() -> None:
        if lock is not None and not await lock.claim(name, hold):
            return
        try:
            await job()
        except ExternalError as exc:
            log.warning("job_external_error job=%s error=%s", name, exc)
            if health is not None:
                await health.failed(name, str(exc), external=True, alert_after=alert_after)
        except Exception as exc:
            log.exception("job_failed job=%s", name)
            if health is not None:
                error = f"{type(exc).__name__}: {exc}"
                await health.failed(name, error, external=False, alert_after=alert_after)
        else:
            if on_success is not None:
                on_success(name)
            if health is not None:
                await health.succeeded(name)

    return run


async def refresh_prices(
    catalog: ModelCatalog, notifier: Notifier, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """Re-read OpenRouter's prices; a configured model that vanished alerts the admin."""
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


def job_table(
    *,
    processor: AITokenPaymentProcessor,
    fulfilment: Fulfilment,
    catalog: ModelCatalog,
    notifier: Notifier,
    sessions: async_sessionmaker[AsyncSession],
    alerts: BuyerAlerts,
    reports: AdminReports,
    intervals: JobIntervals,
    quota_seconds: float,
    summary_time: str,
    backup: SqliteBackup | None = None,
) -> list[Job]:
    now = datetime.now(UTC)
    jobs = [
        Job("payment_poll", processor.poll_open, *every(intervals.payment_poll), idempotent=True),
        Job("expire_orders", processor.expire_overdue, *every(intervals.expiry), idempotent=True),
        Job("fulfil_due", fulfilment.run_due, *every(intervals.fulfilment), idempotent=True),
        # Prices are fetched at start too, so a missing model is reported at once.
        Job(
            "refresh_prices",
            partial(refresh_prices, catalog, notifier, sessions),
            *every(intervals.prices),
            idempotent=True,
            first_run=now,
        ),
        # Orders waiting for funds resume within this long of the operator's top-up.
        Job(
            "funds_recheck",
            fulfilment.recheck_due,
            *every(intervals.funds_recheck),
            idempotent=True,
        ),
        Job(
            "invoice_reminders",
            alerts.run_reminders,
            *every(intervals.expiry),
            idempotent=True,
            misfire_grace=max(60, int(intervals.expiry)),
        ),
        Job(
            "quota_sweep",
            alerts.run_quota_sweep,
            *every(quota_seconds),
            idempotent=True,
            misfire_grace=max(60, int(quota_seconds)),
        ),
        _daily_summary(alerts, summary_time),
        # Admin reports in TIMEZONE, with a wide grace: a report late by hours still
        # goes out, once (its dedupe key names the period).
        Job(
            "daily_report",
            reports.run_daily_due,
            CronTrigger(
                hour=reports.report_hour, minute=reports.report_minute, timezone=reports.zone
            ),
            idempotent=True,
            misfire_grace=REPORT_MISFIRE_GRACE,
            alert_after=1,
        ),
        Job(
            "weekly_report",
            reports.run_weekly_due,
            CronTrigger(
                day_of_week=reports.weekly_day,
                hour=reports.report_hour,
                minute=reports.report_minute,
                timezone=reports.zone,
            ),
            idempotent=True,
            misfire_grace=REPORT_MISFIRE_GRACE,
            alert_after=1,
        ),
        # A report whose time passed while the bot was down is sent at start.
        Job(
            "report_catch_up",
            reports.catch_up,
            "date",
            {"run_date": utcnow()},
            idempotent=True,
            misfire_grace=REPORT_MISFIRE_GRACE,
            alert_after=1,
        ),
    ]
    if backup is not None:
        # Not idempotent: every run writes a new file (rotation keeps the newest few);
        # the first run waits until the newest backup is a day old.
        jobs.append(
            Job(
                "sqlite_backup",
                backup.run,
                "interval",
                {"days": 1},
                idempotent=False,
                alert_after=1,
                first_run=backup.next_run(),
            )
        )
    return jobs


def every(seconds: float) -> tuple[str, dict[str, Any]]:
    return "interval", {"seconds": seconds}


def _daily_summary(alerts: BuyerAlerts, summary_time: str) -> Job:
    hour, minute = (int(part) for part in summary_time.split(":"))
    # The scheduler keeps jobs in memory: after a restart later the same day, today's
    # summary is caught up at once (the dedupe key keeps it to one per day).
    now = datetime.now(alerts.zone)
    due_today = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    catch_up = due_today <= now < due_today + SUMMARY_GRACE
    return Job(
        "daily_summary",
        alerts.run_daily_summary,
        CronTrigger(hour=hour, minute=minute, timezone=alerts.zone),
        idempotent=True,
        misfire_grace=int(SUMMARY_GRACE.total_seconds()),
        alert_after=1,
        first_run=now if catch_up else None,
    )


def build_scheduler(
    jobs: list[Job],
    *,
    timezone: str = "UTC",
    on_success: Callable[[str], None] | None = None,
    lock: JobLock | None = None,
    health: JobHealth | None = None,
) -> AsyncIOScheduler:
    scheduler = AsyncIOScheduler(timezone=timezone, job_defaults=dict(JOB_DEFAULTS))
    for job in jobs:
        interval = job.when.get("seconds") if job.trigger == "interval" else None
        if job.trigger == "interval" and "days" in job.when:
            interval = float(job.when["days"]) * 86400
        scheduler.add_job(
            guarded(
                job.name,
                job.run,
                on_success,
                lock=lock,
                hold=hold_for(interval),
                health=health,
                alert_after=job.alert_after,
            ),
            job.trigger,
            id=job.name,
            name=job.name,
            replace_existing=True,
            coalesce=True,
            max_instances=1,
            misfire_grace_time=job.misfire_grace,
            next_run_time=job.first_run if job.first_run is not None else undefined,
            **job.when,
        )
    return scheduler
