"""The buyer's use cases: choose, quote, confirm (→ order + invoice), cancel, list.

Each method owns its transaction. The provider is called between two short
transactions, never inside one: claim (commit) → call out → record (commit).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TypeVar

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.clock import utcnow
from core.jsonutil import jsonable
from core.money import quantize_crypto
from db import repo
from db.models import Order, OrderStatus, Payment, Quote
from db.status import OPEN
from services.errors import (
    CurrencyUnavailable,
    DomainError,
    ExternalError,
    ModelUnavailable,
    OrderNotFound,
    OrderStateConflict,
    PaymentUnavailable,
    QuoteUnavailable,
)
from services.logcontext import annotate
from services.notify import Notifier
from services.openrouter import ModelCatalog
from services.payments.base import ASSETS, Invoice, PaymentProvider
from services.payments.health import ProviderHealth
from services.pricing import AITokenService, ModelPrice, Package
from services.users import UserView

log = logging.getLogger(__name__)

_Owned = TypeVar("_Owned", Order, Quote)


async def owned(
    session: AsyncSession,
    model: type[_Owned],
    row_id: int,
    user_id: int,
    missing: type[DomainError],
) -> _Owned:
    """The row, if it is this buyer's; else ``missing`` is raised. Callback data carries
    ids, so an id is trusted only once its owner is checked; a foreign row and an unknown
    one get the same answer (we don't say which)."""
    row = await session.get(model, row_id)
    if row is None or row.user_id != user_id:
        raise missing()
    return row


@dataclass(frozen=True)
class _OpenedOrder:
    """An order just made from a quote: what asking for its invoice needs."""

    order_id: int
    total_usd: Decimal
    asset: str


@dataclass(frozen=True)
class QuoteView:
    id: int
    model: str
    model_name: str
    tokens: int
    base_usd: Decimal
    markup_usd: Decimal
    total_usd: Decimal
    asset: str
    approx_crypto: Decimal | None
    expires_at: datetime


@dataclass(frozen=True)
class OrderView:
    id: int
    status: OrderStatus
    model: str
    tokens: int
    base_usd: Decimal
    total_usd: Decimal
    asset: str
    crypto_code: str | None
    crypto_amount: Decimal | None
    network: str | None
    address: str | None
    expires_at: datetime | None
    created_at: datetime
    provider: str | None = None

    @property
    def pay_url(self) -> str | None:
        """The provider's checkout page, when the invoice is paid there (Crypto Pay)
        rather than by a transfer to an address: no coin address is ever a URL."""
        if self.address and self.address.startswith("https://"):
            return self.address
        return None

    @classmethod
    def of(cls, order: Order) -> OrderView:
        return cls(
            id=order.id,
            status=OrderStatus(order.status),
            model=order.model,
            tokens=order.tokens,
            base_usd=order.base_usd,
            total_usd=order.total_usd,
            asset=order.asset,
            crypto_code=order.crypto_code,
            crypto_amount=order.crypto_amount,
            network=order.network,
            address=order.pay_address,
            expires_at=order.expires_at,
            created_at=order.created_at,
            provider=order.provider,
        )


class PaymentGateway:
    """The configured providers in fallback order (SPEC §3)."""

    def __init__(
        self, providers: list[PaymentProvider], health: ProviderHealth | None = None
    ) -> None:
        self.providers = providers
        self.health = health or ProviderHealth()

    async def assets(self) -> list[str]:
        offered: set[str] = set()
        for provider in self.providers:
            try:
                offered.update((await provider.available_assets()).keys())
            except ExternalError as exc:
                log.warning("provider_assets_failed provider=%s error=%s", provider.name, exc)
        return [asset for asset in ASSETS if asset in offered]

    async def rate_usd(self, asset: str) -> Decimal | None:
        for provider in self.providers:
            try:
                rate = await provider.rate_usd(asset)
            except ExternalError:
                continue
            if rate is not None:
                return rate
        return None

    async def create_invoice(
        self, *, order_id: int, amount_usd: Decimal, asset: str
    ) -> tuple[Invoice, list[str]]:
        """Invoice from the first provider that can; also the providers that failed.
        Providers cooling down (services/payments/health.py) go last, not first."""
        failures: list[str] = []
        ready = [p for p in self.providers if not self.health.cooling(p.name)]
        cooling = [p for p in self.providers if self.health.cooling(p.name)]
        for provider in ready + cooling:
            try:
                invoice = await provider.create_invoice(
                    order_id=order_id, amount_usd=amount_usd, asset=asset
                )
            except CurrencyUnavailable:
                # Not this provider's asset: the asset is routed on, nothing failed.
                continue
            except ExternalError as exc:
                log.warning(
                    "invoice_failed provider=%s order=%s error=%s", provider.name, order_id, exc
                )
                if self.health.failed(provider.name, str(exc)):
                    log.warning(
                        "provider_cooling provider=%s seconds=%s",
                        provider.name,
                        self.health.cooldown,
                    )
                failures.append(f"{provider.name}: {exc}")
                continue
            self.health.succeeded(provider.name)
            return invoice, failures
        if not failures:
            raise CurrencyUnavailable(asset=asset)
        raise PaymentUnavailable(failures=failures)


class OrderService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        catalog: ModelCatalog,
        pricing: AITokenService,
        gateway: PaymentGateway,
        *,
        default_model: str,
        quote_ttl: timedelta = timedelta(minutes=15),
        notifier: Notifier | None = None,
    ) -> None:
        self.sessions = sessions
        self.catalog = catalog
        self.pricing = pricing
        self.gateway = gateway
        self.default_model = default_model
        self.quote_ttl = quote_ttl
        self.notifier = notifier

    # --------------------------------------------------------------- browsing
    async def current_model(self, user: UserView) -> ModelPrice:
        offered = await self.catalog.offered()
        by_id = {m.id: m for m in offered if self.pricing.bounds(m) is not None}
        for candidate in (user.model, self.default_model):
            if candidate and candidate in by_id:
                return by_id[candidate]
        if not by_id:
            raise ModelUnavailable(model=user.model or self.default_model)
        return next(iter(by_id.values()))

    async def offered_models(self) -> list[ModelPrice]:
        return [m for m in await self.catalog.offered() if self.pricing.bounds(m) is not None]

    async def packages(self, user: UserView) -> tuple[ModelPrice, list[Package]]:
        model = await self.current_model(user)
        return model, self.pricing.packages(model)

    async def check_amount(self, user: UserView, tokens: int) -> ModelPrice:
        """Raise InvalidAmount (with the allowed range) unless ``tokens`` can be ordered."""
        model = await self.current_model(user)
        self.pricing.quote(model, tokens)
        return model

    async def assets(self) -> list[str]:
        return await self.gateway.assets()

    # ----------------------------------------------------------------- quotes
    async def create_quote(self, user: UserView, tokens: int, asset: str) -> QuoteView:
        if asset not in await self.gateway.assets():
            raise CurrencyUnavailable(asset=asset)
        model = await self.current_model(user)
        price = self.pricing.quote(model, tokens)
        rate = await self.gateway.rate_usd(asset)
        approx = quantize_crypto(price.total_usd / rate, asset) if rate else None
        now = utcnow()
        async with self.sessions() as session, session.begin():
            quote = Quote(
                user_id=user.id,
                model=model.id,
                model_name=model.name,
                tokens=tokens,
                unit_price=price.unit_price,
                base_usd=price.base_usd,
                markup_usd=price.markup_usd,
                total_usd=price.total_usd,
                currency="USD",
                asset=asset,
                approx_crypto=approx,
                created_at=now,
                expires_at=now + self.quote_ttl,
            )
            session.add(quote)
            await session.flush()
            return _quote_view(quote)

    async def cancel_quote(self, user_id: int, quote_id: int) -> None:
        async with self.sessions() as session, session.begin():
            result = await session.execute(
                update(Quote)
                .where(Quote.id == quote_id, Quote.user_id == user_id, Quote.order_id.is_(None))
                .values(expires_at=utcnow())
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                raise QuoteUnavailable()

    async def confirm_quote(
        self,
        user_id: int,
        quote_id: int,
        claimed: Callable[[], Awaitable[None]] | None = None,
    ) -> tuple[OrderView, list[str]]:
        """Turn a quote into an order with an invoice. Returns the order and provider failures.

        The quote is claimed by compare-and-set, so a double tap makes one order. Confirming
        an already confirmed quote returns its order: after a crash Telegram redelivers the
        tap, and the buyer must then see the payment screen, not an error.

        The story, with no transaction open during the provider call: claim the quote for a
        ``new`` order (one transaction), ask the provider for an invoice, then record the
        invoice or, when no provider gave one, cancel the order (one transaction either way).

        ``claimed`` is awaited once the quote is known to be confirmable (claimed now, or
        confirmed before), before the provider call: the handler answers the tap there, as
        creating the invoice can take seconds; its failure is logged and does not stop the
        order. A quote that cannot be confirmed raises ``QuoteUnavailable`` before it is
        called. (The claim is the check: a separate
        read-only check before it cost a whole transaction per ✅ Confirm.)
        """
        opened = await self._open_order(user_id, quote_id)
        if claimed is not None:
            try:
                await claimed()
            except Exception:
                # The quote is claimed: the order must get its invoice (or be cancelled)
                # whatever became of the tap's answer, or it would sit in ``new`` with no
                # invoice and a retap would find no payment screen to show.
                log.warning(
                    "confirm_answer_failed user=%s quote=%s", user_id, quote_id, exc_info=True
                )
        if isinstance(opened, OrderView):
            return opened, []  # confirmed before: its payment screen again
        try:
            invoice, failures = await self.gateway.create_invoice(
                order_id=opened.order_id, amount_usd=opened.total_usd, asset=opened.asset
            )
        except DomainError as exc:
            await self._cancel_uninvoiced(opened.order_id, exc)
            raise
        return await self._record_invoice(opened.order_id, invoice, failures), failures

    async def _open_order(self, user_id: int, quote_id: int) -> OrderView | _OpenedOrder:
        """Transaction 1: claim the quote for a new order (``new``, no invoice yet).

        Returns the existing order instead when the quote was confirmed before, or by a
        concurrent tap: on PostgreSQL two taps can both read the quote unclaimed, and
        the unique ``orders.quote_id`` refuses the second order. That tap then reads the
        quote again and gets the first tap's order, as a later tap would (the tap must
        still be answered; it used to be answered before the claim)."""
        try:
            return await self._claim_quote(user_id, quote_id)
        except IntegrityError:
            return await self._claim_quote(user_id, quote_id)

    async def _claim_quote(self, user_id: int, quote_id: int) -> OrderView | _OpenedOrder:
        now = utcnow()
        async with self.sessions() as session, session.begin():
            quote = await owned(session, Quote, quote_id, user_id, QuoteUnavailable)
            if quote.order_id is not None:
                existing = await session.get(Order, quote.order_id)
                if existing is None or existing.status not in OPEN:
                    raise QuoteUnavailable()
                return OrderView.of(existing)
            if quote.expires_at <= now:
                raise QuoteUnavailable("quote.expired")
            order = Order(
                user_id=user_id,
                quote_id=quote.id,
                status=OrderStatus.NEW.value,
                model=quote.model,
                tokens=quote.tokens,
                unit_price=quote.unit_price,
                base_usd=quote.base_usd,
                markup_usd=quote.markup_usd,
                total_usd=quote.total_usd,
                currency=quote.currency,
                asset=quote.asset,
                created_at=now,
                updated_at=now,
                attempts=0,
            )
            session.add(order)
            await session.flush()
            claimed = await session.execute(
                update(Quote)
                .where(Quote.id == quote_id, Quote.order_id.is_(None))
                .values(order_id=order.id)
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                raise QuoteUnavailable()
            repo.add_event(
                session,
                order.id,
                "order_created",
                actor=f"user:{user_id}",
                status=OrderStatus.NEW.value,
                detail={"quote_id": quote_id, "total_usd": str(quote.total_usd)},
            )
            opened = _OpenedOrder(order.id, order.total_usd, order.asset)
        annotate(order_id=opened.order_id)
        log.info(
            "order_created order=%s user=%s total=%s asset=%s",
            opened.order_id,
            user_id,
            opened.total_usd,
            opened.asset,
        )
        return opened

    async def _cancel_uninvoiced(self, order_id: int, exc: DomainError) -> None:
        """Closing transaction when no provider gave an invoice: the order is cancelled and
        the admins are told which providers failed."""
        async with self.sessions() as session, session.begin():
            await repo.transition(
                session,
                order_id,
                [OrderStatus.NEW],
                OrderStatus.CANCELLED,
                actor="system",
                kind="invoice_failed",
                detail={"failures": exc.params.get("failures", [])},
            )
            if self.notifier is not None and exc.params.get("failures"):
                await self.notifier.admin(
                    session,
                    "admin.provider_failed",
                    dedupe=f"provider-failed:{order_id}",
                    order_id=order_id,
                    failures="; ".join(exc.params["failures"])[:500],
                )

    async def _record_invoice(
        self, order_id: int, invoice: Invoice, failures: list[str]
    ) -> OrderView:
        """Closing transaction with the invoice: the order awaits its payment, which gets
        its row. ``OrderStateConflict`` if the stale-invoice sweeper cancelled it meanwhile."""
        async with self.sessions() as session, session.begin():
            recorded = await repo.transition(
                session,
                order_id,
                [OrderStatus.NEW],
                OrderStatus.AWAITING_PAYMENT,
                actor="system",
                kind="invoice_created",
                detail={
                    "provider": invoice.provider,
                    "payment_id": invoice.payment_id,
                    "fallback_from": failures,
                },
                provider=invoice.provider,
                provider_payment_id=invoice.payment_id,
                provider_hash=invoice.payment_hash,
                crypto_code=invoice.crypto_code,
                crypto_amount=invoice.crypto_amount,
                network=invoice.network,
                pay_address=invoice.address,
                expires_at=invoice.expires_at,
            )
            if recorded is None:
                # The stale-invoice sweeper cancelled it meanwhile; the invoice is unused.
                raise OrderStateConflict()
            if failures and self.notifier is not None:
                await self.notifier.admin(
                    session,
                    "admin.provider_fallback",
                    dedupe=f"fallback:{order_id}",
                    order_id=order_id,
                    failures="; ".join(failures)[:500],
                )
            session.add(
                Payment(
                    order_id=order_id,
                    provider=invoice.provider,
                    provider_payment_id=invoice.payment_id,
                    provider_hash=invoice.payment_hash,
                    fiat_amount=invoice.fiat_amount,
                    fiat_currency=invoice.fiat_currency,
                    crypto_code=invoice.crypto_code,
                    crypto_amount=invoice.crypto_amount,
                    address=invoice.address,
                    is_paid=False,
                    updates=0,
                    last_payload=jsonable(invoice.raw),
                    created_at=utcnow(),
                    updated_at=utcnow(),
                )
            )
            # Not in this session's identity map before: the SELECT reads the row as the
            # UPDATE above left it (a refresh after it read it a second time).
            order_row = await session.get(Order, order_id)
            assert order_row is not None
            return OrderView.of(order_row)

    # ----------------------------------------------------------------- orders
    async def cancel_order(self, user_id: int, order_id: int) -> OrderView:
        async with self.sessions() as session, session.begin():
            order = await owned(session, Order, order_id, user_id, OrderNotFound)
            changed = await repo.transition(
                session,
                order_id,
                [OrderStatus.AWAITING_PAYMENT],
                OrderStatus.CANCELLED,
                actor=f"user:{user_id}",
                kind="cancelled_by_buyer",
            )
            if changed is None:
                raise OrderStateConflict(status=order.status)
            await session.refresh(order)
            return OrderView.of(order)

    async def recent_orders(self, user_id: int, limit: int = 10) -> list[OrderView]:
        async with self.sessions() as session:
            rows = await session.execute(
                select(Order).where(Order.user_id == user_id).order_by(Order.id.desc()).limit(limit)
            )
            return [OrderView.of(o) for o in rows.scalars()]


def _quote_view(quote: Quote) -> QuoteView:
    return QuoteView(
        id=quote.id,
        model=quote.model,
        model_name=quote.model_name,
        tokens=quote.tokens,
        base_usd=quote.base_usd,
        markup_usd=quote.markup_usd,
        total_usd=quote.total_usd,
        asset=quote.asset,
        approx_crypto=quote.approx_crypto,
        expires_at=quote.expires_at,
    )
