"""Every Prometheus metric the bot exports, in one place (docs/operations.md lists them).

Two kinds:

- **Events** (counters, the latency histogram, job success times) are counted where
  they happen. ``Metrics`` owns them; the app builds one per bot instance with its own
  registry (tests run several bots in one process) and hands it down to the code that
  counts. It lives in ``core`` so every layer may hold one without importing upwards.
- **State** (orders by status, the outbox backlog, the funds ledger) is read from the
  database at scrape time (``processing/observe.py``), so it is the same figure on
  every replica and never stale; ``STATE`` names those families here.

Label values are bounded sets (statuses, providers, reasons, error kinds, job names),
never ids: one series per order would grow without end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "aitoken_"

# Families the scrape-time collector yields: name → help.
STATE = {
    "aitoken_orders": "Orders by status (from the database).",
    "aitoken_outbox_pending": "Outbox messages waiting to be sent.",
    "aitoken_outbox_oldest_pending_age_seconds": "Age of the oldest pending outbox message.",
    "aitoken_openrouter_balance_usd": "OpenRouter balance (credits − usage) at the last "
    "measurement of the funds ledger.",
    "aitoken_openrouter_committed_usd": "What buyer keys may still spend (funds ledger).",
    "aitoken_openrouter_headroom_usd": "Balance minus committed (funds ledger).",
    "aitoken_funds_measured_age_seconds": "Age of the funds ledger's last measurement.",
    "aitoken_state_scrape_ok": "1 when the database figures above were read for this "
    "scrape, 0 when the read failed or timed out (they are then left out).",
}

# Paid → delivered, in seconds: most orders take seconds, a funds wait can take hours.
LATENCY_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 900, 3600, 4 * 3600, 24 * 3600)


def payment_source(source: str) -> str:
    """The ``source`` label of a confirmation: how the bot learnt of the payment.
    ``callback:<provider>`` → callback; ``check:…`` (a buyer's 🔄) → check; the
    periodic poll and the poll before expiring an invoice → poll."""
    if source.startswith("callback"):
        return "callback"
    if source.startswith("check"):
        return "check"
    return "poll"


@dataclass
class TelegramSeen:
    """How the bot's calls to Telegram have been going (monotonic seconds), for the
    readiness check. An answer of any kind (even a 400 or a 429) proves Telegram is
    reachable and the token valid; a transport failure, a 5xx or a 401 does not.
    ``failing_since`` is the first failure after the last success (None: not failing)."""

    last_ok: float | None = None
    failing_since: float | None = None
    last_error: str | None = None

    def ok(self) -> None:
        self.last_ok = time.monotonic()
        self.failing_since = None

    def failed(self, error: str) -> None:
        if self.failing_since is None:
            self.failing_since = time.monotonic()
        self.last_error = error


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.payments_confirmed = Counter(
            "aitoken_payments_confirmed",
            "Payments that moved an order to paid, by provider and how the bot learnt of it "
            "(callback, poll, check).",
            ["provider", "source"],
            registry=r,
        )
        self.paid_to_delivered = Histogram(
            "aitoken_paid_to_delivered_seconds",
            "From an order's payment to its delivered key.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.telegram_429 = Counter(
            "aitoken_telegram_429",
            "Telegram answers 429 (Too Many Requests): each pauses sending for retry_after.",
            ["method"],
            registry=r,
        )
        self.telegram_errors = Counter(
            "aitoken_telegram_unreachable",
            "Telegram calls that got no answer (transport failure, 5xx, 401).",
            ["kind"],
            registry=r,
        )
        self.callbacks_rejected = Counter(
            "aitoken_callbacks_rejected",
            "Provider callbacks refused, by provider and reason (bad_signature, too_large, "
            "malformed, …).",
            ["provider", "reason"],
            registry=r,
        )
        self.external_errors = Counter(
            "aitoken_external_errors",
            "Failed calls to a payment provider or OpenRouter (each attempt), by service "
            "and kind (connect, timeout, transport, http_<status>, invalid_json).",
            ["service", "kind"],
            registry=r,
        )
        self.job_last_success = Gauge(
            "aitoken_job_last_success_timestamp_seconds",
            "Unix time of each scheduled job's last run that ended without an error.",
            ["job"],
            registry=r,
        )
        self.chat_answers = Counter(
            "aitoken_chat_answers",
            "In-bot chat answers on buyers' own keys, by model and outcome (done, stopped, "
            "timeout, failed, credit = the key's credit used up).",
            ["model", "outcome"],
            registry=r,
        )
        self.chat_tokens = Counter(
            "aitoken_chat_tokens",
            "Tokens of in-bot chat answers as OpenRouter billed them, by model and kind "
            "(prompt, completion).",
            ["model", "kind"],
            registry=r,
        )
        self.chat_cost = Counter(
            "aitoken_chat_cost_usd",
            "What in-bot chat answers cost on the buyers' keys (OpenRouter's usage.cost), "
            "by model.",
            ["model"],
            registry=r,
        )
        self.telegram = TelegramSeen()

    # Small verbs for the callers, so they need not know label names.
    def confirmed(self, provider: str, source: str) -> None:
        self.payments_confirmed.labels(provider=provider, source=payment_source(source)).inc()

    def delivered(self, seconds: float) -> None:
        self.paid_to_delivered.observe(max(0.0, seconds))

    def rejected(self, provider: str, reason: str) -> None:
        self.callbacks_rejected.labels(provider=provider, reason=reason).inc()

    def external_error(self, service: str, kind: str) -> None:
        self.external_errors.labels(service=service, kind=kind).inc()

    def chat_answered(
        self,
        model: str,
        outcome: str,
        *,
        prompt_tokens: int,
        completion_tokens: int,
        cost: Decimal | None,
    ) -> None:
        self.chat_answers.labels(model=model, outcome=outcome).inc()
        self.chat_tokens.labels(model=model, kind="prompt").inc(prompt_tokens)
        self.chat_tokens.labels(model=model, kind="completion").inc(completion_tokens)
        if cost is not None:
            # Prometheus holds floats only; the stored answers keep the Decimal.
            self.chat_cost.labels(model=model).inc(float(cost))

    def job_succeeded(self, job: str) -> None:
        self.job_last_success.labels(job=job).set(time.time())
