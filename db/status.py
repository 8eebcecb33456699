"""The order's life (SPEC §4) as data: its states, the groups the code asks about, and
the transitions ``repo.transition`` allows. The outbox's and broadcasts' states too.

The values are what the status columns hold; renaming one needs a migration.
``python -m db.status`` prints the state diagram docs/architecture.md carries.
"""

from __future__ import annotations

import sys
from collections.abc import Collection
from enum import StrEnum


class OrderStatus(StrEnum):
    NEW = "new"  # order row written, invoice being created at the provider
    AWAITING_PAYMENT = "awaiting_payment"
    PAID = "paid"
    FULFILLING = "fulfilling"
    AWAITING_FUNDS = "awaiting_funds"
    DELIVERED = "delivered"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    FAILED = "failed"
    REFUNDED = "refunded"


_S = OrderStatus  # short, for the tables below

# The invoice is (being) shown and may still be paid: the buyer's order screen comes
# back for these, and a partial transfer is told as "send the rest".
OPEN = frozenset({_S.NEW, _S.AWAITING_PAYMENT})
# Closed without the payment counting; a part that arrived is still owed back.
CLOSED_UNPAID = frozenset({_S.EXPIRED, _S.CANCELLED})
# The payment has not counted: a full one moves these to `paid` (SPEC §3 honours a
# payment after expiry or cancellation), and the provider must not hold money for them.
UNPAID = OPEN | CLOSED_UNPAID
# The payment counted: the crypto we keep (a failed order is still owed a delivery or a
# refund, so it counts until the admin marks it refunded), and a later "not paid"
# report is stale noise.
SETTLED = frozenset({_S.PAID, _S.FULFILLING, _S.AWAITING_FUNDS, _S.DELIVERED, _S.FAILED})
# Money arrived, no credit granted, and no worker on it.
PAID_UNDELIVERED = frozenset({_S.PAID, _S.AWAITING_FUNDS, _S.FAILED})
# /retry puts these back to `paid` (a `paid` one may be stuck behind a long back-off).
RETRYABLE = PAID_UNDELIVERED
# /refund: delivered orders carry credit on the buyer's key (the buyer may have spent
# it); unpaid ones have nothing to give back, except what arrived in part
# (CLOSED_UNPAID with partial_seen). One of these may still carry credit from a PATCH
# whose answer was lost: the refund takes it off the key, confirmed, first.
REFUNDABLE = PAID_UNDELIVERED
# A fulfilment worker may claim these (`fulfilling`: taken over when its lease ran out).
CLAIMABLE = frozenset({_S.PAID, _S.AWAITING_FUNDS, _S.FULFILLING})

# from → the statuses a compare-and-set may move it to. Written from what the code does;
# a change of the order's life is a change here first.
TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    _S.NEW: frozenset({_S.AWAITING_PAYMENT, _S.CANCELLED, _S.PAID}),
    _S.AWAITING_PAYMENT: frozenset({_S.PAID, _S.EXPIRED, _S.CANCELLED}),
    # A late full payment; a partial one the operator gave back.
    _S.EXPIRED: frozenset({_S.PAID, _S.REFUNDED}),
    _S.CANCELLED: frozenset({_S.PAID, _S.REFUNDED}),
    # Claimed by a worker; /retry (stays `paid`, fresh attempts); /refund.
    _S.PAID: frozenset({_S.FULFILLING, _S.PAID, _S.REFUNDED}),
    # Left by the worker holding the lease (a transient error goes back to `paid`), or
    # taken over by another when the lease ran out.
    _S.FULFILLING: frozenset({_S.DELIVERED, _S.AWAITING_FUNDS, _S.FAILED, _S.PAID, _S.FULFILLING}),
    _S.AWAITING_FUNDS: frozenset({_S.FULFILLING, _S.PAID, _S.REFUNDED}),
    _S.FAILED: frozenset({_S.PAID, _S.REFUNDED}),
    _S.DELIVERED: frozenset(),
    _S.REFUNDED: frozenset(),
}
# Nothing moves these any more.
TERMINAL = frozenset(s for s, targets in TRANSITIONS.items() if not targets)


class IllegalTransition(RuntimeError):
    """A compare-and-set asked for a move TRANSITIONS does not list: a bug in the caller."""


def check_transition(allowed: Collection[OrderStatus], to: OrderStatus) -> None:
    """Refuse a compare-and-set that allows nothing, or any ``allowed → to`` move
    TRANSITIONS does not list."""
    illegal = sorted(s.value for s in allowed if to not in TRANSITIONS[s])
    if illegal or not allowed:
        raise IllegalTransition(f"{illegal or '(none)'} → {to.value}")


def mermaid() -> str:
    """The order's state diagram, from TRANSITIONS (docs/architecture.md carries it)."""
    lines = ["stateDiagram-v2", f"    [*] --> {_S.NEW.value}"]
    for source in OrderStatus:
        for target in OrderStatus:  # enum order: the same text on every run
            if target in TRANSITIONS[source]:
                lines.append(f"    {source.value} --> {target.value}")
    lines += [f"    {s.value} --> [*]" for s in OrderStatus if s in TERMINAL]
    return "\n".join(lines)


class OutboxStatus(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"  # gave up: the error is on the row
    DROPPED = "dropped"  # the chat cannot be reached (blocked, deleted)


class BroadcastStatus(StrEnum):
    DRAFT = "draft"
    QUEUED = "queued"
    DONE = "done"
    CANCELLED = "cancelled"


if __name__ == "__main__":  # python -m db.status: the diagram for docs/architecture.md
    sys.stdout.write(mermaid() + "\n")
