"""What an operator's monitoring asks the bot's HTTP server: /metrics, /healthz, /readyz.

/metrics serves the events counted where they happen (``core.metrics.Metrics``) plus
the state read from the database for this scrape, within a short timeout: a slow or
dead database yields ``aitoken_state_scrape_ok 0`` and no stale figures, never a hung
scrape. The funds figures come from the shared funds ledger as last measured, never
from an extra OpenRouter call per scrape.

/healthz is liveness (the process answers); /readyz is readiness (``Readiness``).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.clock import utcnow
from core.metrics import STATE, Metrics
from db.models import FundsLedger, Order, OrderStatus, OutboxMessage
from db.status import OutboxStatus
from processing.funds import LEDGER_ID
from processing.readiness import Readiness

log = logging.getLogger(__name__)


@dataclass
class StateSnapshot:
    orders: dict[str, int] = field(default_factory=dict)
    outbox_pending: int = 0
    outbox_oldest: datetime | None = None
    balance: Decimal | None = None
    committed: Decimal | None = None
    measured_at: datetime | None = None
    read_at: datetime = field(default_factory=utcnow)


async def read_state(sessions: async_sessionmaker[AsyncSession]) -> StateSnapshot:
    snap = StateSnapshot()
    async with sessions() as session:
        rows = await session.execute(select(Order.status, func.count()).group_by(Order.status))
        snap.orders = {status: int(count) for status, count in rows.all()}
        pending, oldest = (
            await session.execute(
                select(func.count(), func.min(OutboxMessage.created_at)).where(
                    OutboxMessage.status == OutboxStatus.PENDING.value
                )
            )
        ).one()
        snap.outbox_pending, snap.outbox_oldest = int(pending), oldest
        ledger = await session.get(FundsLedger, LEDGER_ID)
        if ledger is not None:
            snap.balance, snap.committed = ledger.available, ledger.committed
            snap.measured_at = ledger.measured_at
    return snap


class StateCollector(Collector):
    """Yields the families of ``STATE`` from the snapshot taken for this scrape."""

    def __init__(self) -> None:
        self.snapshot: StateSnapshot | None = None

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []  # the families depend on the snapshot; nothing to check at register

    def collect(self) -> Iterable[GaugeMetricFamily]:
        snap = self.snapshot
        yield _gauge("aitoken_state_scrape_ok", 1 if snap is not None else 0)
        if snap is None:
            return
        orders = GaugeMetricFamily("aitoken_orders", STATE["aitoken_orders"], labels=["status"])
        for status in OrderStatus:  # every status, 0 included: a series never vanishes
            orders.add_metric([status.value], snap.orders.get(status.value, 0))
        yield orders
        yield _gauge("aitoken_outbox_pending", snap.outbox_pending)
        age = (snap.read_at - snap.outbox_oldest).total_seconds() if snap.outbox_oldest else 0.0
        yield _gauge("aitoken_outbox_oldest_pending_age_seconds", max(0.0, age))
        if snap.balance is not None and snap.committed is not None:
            yield _gauge("aitoken_openrouter_balance_usd", float(snap.balance))
            yield _gauge("aitoken_openrouter_committed_usd", float(snap.committed))
            yield _gauge("aitoken_openrouter_headroom_usd", float(snap.balance - snap.committed))
        if snap.measured_at is not None:
            measured_age = (snap.read_at - snap.measured_at).total_seconds()
            yield _gauge("aitoken_funds_measured_age_seconds", max(0.0, measured_age))


def _gauge(name: str, value: float) -> GaugeMetricFamily:
    # Prometheus samples are floats by definition: the money gauges are for graphs and
    # alerts, never for accounting (the ledger keeps the Decimal).
    return GaugeMetricFamily(name, STATE[name], value=value)


class OpsRoutes:
    """/healthz, /readyz and /metrics on the bot's HTTP server."""

    def __init__(
        self,
        metrics: Metrics,
        sessions: async_sessionmaker[AsyncSession],
        readiness: Readiness,
        *,
        token: str | None = None,
        timeout: float = 2.0,
    ) -> None:
        self.metrics = metrics
        self.sessions = sessions
        self.readiness = readiness
        self.token = token
        self.timeout = timeout
        self.state = StateCollector()
        metrics.registry.register(self.state)

    def install(self, app: web.Application) -> None:
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.scrape)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def readyz(self, request: web.Request) -> web.Response:
        report = await self.readiness.run()
        return web.json_response(report.body(), status=200 if report.ok else 503)

    async def scrape(self, request: web.Request) -> web.Response:
        if self.token is not None and not _bearer_matches(request, self.token):
            return web.json_response(
                {"error": "unauthorized"}, status=401, headers={"WWW-Authenticate": "Bearer"}
            )
        started = time.monotonic()
        try:
            snapshot: StateSnapshot | None = await asyncio.wait_for(
                read_state(self.sessions), self.timeout
            )
        except Exception as exc:  # a scrape must answer; the gap shows as scrape_ok 0
            log.warning("metrics_state_failed error=%s", type(exc).__name__)
            snapshot = None
        # Set and rendered with no await between: concurrent scrapes never mix snapshots.
        self.state.snapshot = snapshot
        body = generate_latest(self.metrics.registry)
        log.debug("metrics_scraped seconds=%.3f", time.monotonic() - started)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _bearer_matches(request: web.Request, token: str) -> bool:
    given = request.headers.get("Authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer":
        return False
    # Constant time: the comparison must not tell an attacker how much was right.
    return hmac.compare_digest(value.strip().encode(), token.encode())
