"""Which forum topic of the admin group each kind of admin alert goes to.

An admin group with topics (a forum supergroup) can keep payments, funds, failures,
security and reports apart, so the operator mutes what they need not read at once and
never misses what they must. ADMIN_TOPIC_<CATEGORY> names a topic's ``message_thread_id``;
unset, that category goes to the group itself. Every admin alert kind is listed here, in
one table: ``tests/test_admin_topics.py`` fails when the code sends one that is not.
"""

from __future__ import annotations

from enum import StrEnum


class AlertCategory(StrEnum):
    PAYMENTS = "payments"  # money received, and payments the operator must settle by hand
    FUNDS = "funds"  # the OpenRouter balance cannot cover paid orders
    FAILURES = "failures"  # something did not work: delivery, providers, models, ledgers
    SECURITY = "security"  # refused callbacks: forged, unsigned, replayed
    REPORTS = "reports"  # daily and weekly reports


ALERT_CATEGORIES: dict[str, AlertCategory] = {
    "admin.paid": AlertCategory.PAYMENTS,
    "admin.paid_late": AlertCategory.PAYMENTS,
    "admin.paid_after_close": AlertCategory.PAYMENTS,
    "admin.overpaid": AlertCategory.PAYMENTS,
    "admin.partial_after_close": AlertCategory.PAYMENTS,
    "admin.refund_partial": AlertCategory.PAYMENTS,
    "admin.mismatch": AlertCategory.PAYMENTS,
    "admin.awaiting_funds": AlertCategory.FUNDS,
    "admin.awaiting_funds_changed": AlertCategory.FUNDS,
    "admin.fulfilment_failed": AlertCategory.FAILURES,
    "admin.provider_failed": AlertCategory.FAILURES,
    "admin.provider_fallback": AlertCategory.FAILURES,
    "admin.model_missing": AlertCategory.FAILURES,
    "admin.job_failing": AlertCategory.FAILURES,
    "admin.job_recovered": AlertCategory.FAILURES,
    "admin_report.reconcile_alert": AlertCategory.FAILURES,
    "admin.callback_rejected": AlertCategory.SECURITY,
}
