"""Fulfilment (SPEC §2): turn a paid order into OpenRouter credit on the buyer's key.

Buying = PATCHing the buyer's key limit to the ABSOLUTE sum of the base cost of their
delivered orders plus this one, computed from our ledger; a retry PATCHes the same
number, so no retry can double-credit. All orders of one buyer raise one key, so a
buyer's fulfilment is serialised by a lease on the user row (fencing token = lease
owner). No transaction is open during an OpenRouter call:
claim (commit) → key/balance/PATCH over HTTP → record (commit).

When the operator's headroom does not cover an order, it waits (``awaiting_funds``)
and the admin group is told the exact top-up (SPEC §2). Waiting orders form one queue,
in the order they were paid: an order goes only when the headroom covers its own need
plus the needs of the orders waiting before it. So the top-up told for an order is
``its need + the needs queued before it − headroom`` (a negative headroom, a deficit
the operator already has, is part of it): paying exactly that lets this order and every
order before it through, and a newer order cannot take the money meant for an older one.
When that figure changes while the order waits (an order before it went, the deficit
grew), the new figure is told once.

Modules: ``leasing`` (the buyer's lease), ``queue`` (which orders are due, the funds
queue), ``keys`` (creating the buyer's key once), ``ledger`` (the key back to the
ledger), ``records`` (how an attempt ended), ``service`` (the ``Fulfilment`` jobs).
"""

from processing.fulfilment.keys import KEY_CREATE_STARTED, KEY_NAME_PREFIX, key_name
from processing.fulfilment.leasing import BuyerBusy, LeaseLost
from processing.fulfilment.queue import FundsRecheck
from processing.fulfilment.service import Fulfilment

__all__ = [
    "KEY_CREATE_STARTED",
    "KEY_NAME_PREFIX",
    "BuyerBusy",
    "Fulfilment",
    "FundsRecheck",
    "LeaseLost",
    "key_name",
]
