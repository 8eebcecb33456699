"""The schema. Created only by Alembic (db/migrations); this module is its source of truth."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from db.status import OrderStatus as OrderStatus  # re-exported: the model's vocabulary
from db.status import OutboxStatus
from db.types import Money, UTCDateTime

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    language: Mapped[str] = mapped_column(String(8), default="en")
    first_name: Mapped[str | None] = mapped_column(String(128))
    username: Mapped[str | None] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(128))  # the buyer's chosen model
    reachable: Mapped[bool] = mapped_column(Boolean, default=True)
    # Preferences (⚙️ Settings): what the scheduled jobs may send this buyer.
    notify_quota: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    notify_reminders: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    daily_summary: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Highest low-quota threshold (percent used: 0, 80, 95) already announced; a top-up
    # that lowers the used share re-arms the lower thresholds.
    quota_alert_level: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Fulfilment of one buyer's orders is serialised: all of them raise one key.
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Quote(Base):
    """A price shown to a buyer; confirming it turns it into exactly one order."""

    __tablename__ = "quotes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    model: Mapped[str] = mapped_column(String(128))
    model_name: Mapped[str] = mapped_column(String(256))
    tokens: Mapped[int] = mapped_column(BigInteger)
    unit_price: Mapped[Decimal] = mapped_column(Money(24, 12))
    base_usd: Mapped[Decimal] = mapped_column(Money(12, 2))
    markup_usd: Mapped[Decimal] = mapped_column(Money(12, 2))
    total_usd: Mapped[Decimal] = mapped_column(Money(12, 2))
    currency: Mapped[str] = mapped_column(String(3), default="USD")
    asset: Mapped[str] = mapped_column(String(16))
    approx_crypto: Mapped[Decimal | None] = mapped_column(Money(28, 12))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    order_id: Mapped[int | None] = mapped_column(Integer, unique=True)


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    quote_id: Mapped[int | None] = mapped_column(ForeignKey("quotes.id"), unique=True)
    status: Mapped[str] = mapped_column(String(24), index=True)  # OrderStatus
    # The quote, locked (SPEC §4).
    model: Mapped[str] = mapped_column(String(128))
    tokens: Mapped[int] = mapped_column(BigInteger)
    unit_price: Mapped[Decimal] = mapped_column(Money(24, 12))
    base_usd: Mapped[Decimal] = mapped_column(Money(12, 2))
    markup_usd: Mapped[Decimal] = mapped_column(Money(12, 2))
    total_usd: Mapped[Decimal] = mapped_column(Money(12, 2))
    currency: Mapped[str] = mapped_column(String(3), default="USD")
    asset: Mapped[str] = mapped_column(String(16))
    crypto_code: Mapped[str | None] = mapped_column(String(32))
    crypto_amount: Mapped[Decimal | None] = mapped_column(Money(28, 12))
    network: Mapped[str | None] = mapped_column(String(64))
    provider: Mapped[str | None] = mapped_column(String(32))
    provider_payment_id: Mapped[str | None] = mapped_column(String(128))
    provider_hash: Mapped[str | None] = mapped_column(String(128))
    pay_address: Mapped[str | None] = mapped_column(String(256))
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Life cycle.
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    paid_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    partial_seen: Mapped[bool] = mapped_column(Boolean, default=False)
    # Money the order could not take (paid after it closed, overpaid): why the operator
    # must act. Set once with the alert; the order's status is left as it was.
    attention: Mapped[str | None] = mapped_column(String(32))
    # Last time 🔄 Check payment asked the provider (a compare-and-set throttle).
    checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Fulfilment work claiming.
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    # Waiting for the operator's funds (processing/fulfilment/): what this order asks of
    # the headroom (counted by orders queued behind it), and the top-up last told to the
    # admin group (a new figure is told once). USD, like every amount of this row.
    funds_needed_usd: Mapped[Decimal | None] = mapped_column(Money(12, 6))
    funds_topup_usd: Mapped[Decimal | None] = mapped_column(Money(12, 2))
    reminder_sent: Mapped[bool] = mapped_column(Boolean, default=False)
    refund_note: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint("provider", "provider_payment_id", name="uq_orders_provider_payment"),
        Index("ix_orders_status_next", "status", "next_attempt_at"),
    )


class Payment(Base):
    """What the provider said about an invoice; one row per provider payment."""

    __tablename__ = "payments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    provider: Mapped[str] = mapped_column(String(32))
    provider_payment_id: Mapped[str] = mapped_column(String(128))
    provider_hash: Mapped[str] = mapped_column(String(128))
    fiat_amount: Mapped[Decimal] = mapped_column(Money(12, 2))
    fiat_currency: Mapped[str] = mapped_column(String(3))
    crypto_code: Mapped[str] = mapped_column(String(32))
    crypto_amount: Mapped[Decimal] = mapped_column(Money(28, 12))
    address: Mapped[str] = mapped_column(String(256))
    is_paid: Mapped[bool] = mapped_column(Boolean, default=False)
    # The highest sum received the provider reported (None: it reports none).
    received_amount: Mapped[Decimal | None] = mapped_column(Money(28, 12))
    updates: Mapped[int] = mapped_column(Integer, default=0)
    last_payload: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        UniqueConstraint("provider", "provider_payment_id", name="uq_payments_provider_payment"),
    )


class OrderEvent(Base):
    """Append-only history of every order: who changed what, when, from which source."""

    __tablename__ = "order_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    kind: Mapped[str] = mapped_column(String(48))
    from_status: Mapped[str | None] = mapped_column(String(24))
    to_status: Mapped[str | None] = mapped_column(String(24))
    actor: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class ApiKey(Base):
    """The buyer's one OpenRouter key; the plaintext only ever Fernet-encrypted."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), unique=True)
    name: Mapped[str] = mapped_column(String(64))
    openrouter_hash: Mapped[str] = mapped_column(String(128), unique=True)
    label: Mapped[str] = mapped_column(String(64))
    encrypted_key: Mapped[str] = mapped_column(Text)
    limit_usd: Mapped[Decimal] = mapped_column(Money(12, 2))  # last limit we set
    key_shown: Mapped[bool] = mapped_column(Boolean, default=False)  # shown to the buyer once
    # Last figures OpenRouter reported for this key, shown (with their age) when it is down.
    last_limit: Mapped[Decimal | None] = mapped_column(Money(12, 6))
    last_usage: Mapped[Decimal | None] = mapped_column(Money(12, 6))
    last_usage_daily: Mapped[Decimal | None] = mapped_column(Money(12, 6))
    last_usage_weekly: Mapped[Decimal | None] = mapped_column(Money(12, 6))
    last_usage_monthly: Mapped[Decimal | None] = mapped_column(Money(12, 6))
    last_checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    currency: Mapped[str] = mapped_column(String(3), default="USD")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class OutboxMessage(Base):
    """A message to send, written in the transaction of the change it reports."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    chat_id: Mapped[int] = mapped_column(BigInteger, index=True)
    kind: Mapped[str] = mapped_column(String(16), default="text")
    text: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # A once-only key per logical message: writing it twice is a no-op.
    dedupe_key: Mapped[str | None] = mapped_column(String(128), unique=True)
    broadcast_id: Mapped[int | None] = mapped_column(Integer, index=True)
    category: Mapped[str | None] = mapped_column(String(32))  # admin alert topic
    status: Mapped[str] = mapped_column(
        String(16), default=OutboxStatus.PENDING.value, index=True
    )  # OutboxStatus
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Broadcast(Base):
    """An admin's message to every reachable buyer, sent through the outbox."""

    __tablename__ = "broadcasts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    created_by: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))  # BroadcastStatus
    total: Mapped[int] = mapped_column(Integer, default=0)
    progress_chat_id: Mapped[int | None] = mapped_column(BigInteger)
    progress_message_id: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class FundsLedger(Base):
    """The operator's OpenRouter headroom as last measured, shared by every replica.

    One row (id 1). A key's limit is raised only while holding this row's lease, and
    each raise is added to ``committed`` before the lease is let go: two replicas can
    never both spend the same headroom (SPEC §2's balance check holds across processes,
    not only within one). The lease is a row, not a held transaction, because the
    PATCH it covers is a network call.
    """

    __tablename__ = "funds_ledger"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # What the key list said at measured_at, plus raises made since (processing/funds.py).
    measured_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    committed: Mapped[Decimal | None] = mapped_column(Money(18, 6))
    # What GET /credits said at balance_at (re-read every few seconds, the list rarely).
    available: Mapped[Decimal | None] = mapped_column(Money(18, 6))
    balance_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Bumped by every write that may change measured_at or committed: the background
    # listing adopts its total only if the figure stayed as it found it (ABA-safe,
    # unlike measured_at, which can be NULL before and after a measure-raise-lose).
    generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class RuntimeSetting(Base):
    """A value the bot learned while running that overrides its environment setting.

    Today one kind: ``admin_chat_moved_from:<old id>`` → the supergroup id Telegram
    gave the admin group when it was upgraded (the old id then answers only
    "migrate_to_chat_id"). Keyed by the old id, so an operator who later points
    ADMIN_CHAT_ID at another group is not overridden by a stale move.
    """

    __tablename__ = "runtime_settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ChatMessage(Base):
    """One turn of a buyer's in-bot chat with their model (💬 Chat), kept so the next
    question carries the recent conversation. ``role`` "new" marks where ``/new`` started
    over; ``/forget`` deletes every row of the buyer. An answer's ``cost`` is OpenRouter's
    own figure (``usage.cost``), billed to the buyer's key, never ours."""

    __tablename__ = "chat_messages"
    __table_args__ = (Index("ix_chat_messages_user_id_id", "user_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    role: Mapped[str] = mapped_column(String(16))  # user | assistant | new
    content: Mapped[str] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(String(128))
    tokens_prompt: Mapped[int | None] = mapped_column(Integer)
    tokens_completion: Mapped[int | None] = mapped_column(Integer)
    cost: Mapped[Decimal | None] = mapped_column(Money(12, 6))
    currency: Mapped[str] = mapped_column(String(3), default="USD")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
