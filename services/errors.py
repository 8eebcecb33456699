"""Domain errors. Each carries a locale key so one error router can answer the buyer."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """Something the buyer did or asked for cannot be done; nothing was changed."""

    key = "error.generic"

    def __init__(self, key: str | None = None, **params: Any) -> None:
        self.key = key or self.key
        self.params = params
        super().__init__(self.key, params)


class InvalidAmount(DomainError):
    key = "amount.invalid"


class ModelUnavailable(DomainError):
    key = "model.unavailable"


class QuoteUnavailable(DomainError):
    """The quote is unknown, foreign, expired or already used."""

    key = "quote.stale"


class OrderNotFound(DomainError):
    """Unknown order, or one that belongs to someone else (we don't say which)."""

    key = "order.not_found"


class OrderStateConflict(DomainError):
    key = "order.state_conflict"


class CurrencyUnavailable(DomainError):
    key = "currency.unavailable"


class PaymentUnavailable(DomainError):
    """Every configured provider failed to create an invoice."""

    key = "payment.unavailable"


class ExternalError(Exception):
    """A call to an outside service failed. ``transient`` says whether a retry may help."""

    def __init__(
        self,
        service: str,
        message: str,
        *,
        status: int | None = None,
        transient: bool = False,
        body: str | None = None,
        unsent: bool = False,
    ) -> None:
        self.service = service
        self.status = status
        self.transient = transient
        self.body = body
        # The request never reached the service (connection refused): it surely did nothing.
        self.unsent = unsent
        super().__init__(f"{service}: {message}" + (f" (HTTP {status})" if status else ""))


class OpenRouterError(ExternalError):
    pass


class ProviderError(ExternalError):
    pass


class CryptoPayError(ProviderError):
    """Crypto Pay failed or refused. ``error_name`` is the API's own ``error.name``
    (``USER_NOT_FOUND``, ``INSUFFICIENT_FUNDS``, ``SPEND_ID_ALREADY_USED``, …) when it
    answered with its envelope, None for a transport failure or a bare 5xx."""

    def __init__(
        self,
        service: str,
        message: str,
        *,
        status: int | None = None,
        transient: bool = False,
        body: str | None = None,
        error_name: str | None = None,
        unsent: bool = False,
    ) -> None:
        super().__init__(
            service, message, status=status, transient=transient, body=body, unsent=unsent
        )
        self.error_name = error_name


class CallbackRejected(Exception):
    """A provider callback/webhook failed its signature or shape check; nothing was applied.

    ``reason`` is a short code (``bad_signature``) for the log and the admin alert."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CallbackMalformed(CallbackRejected):
    """Signed by the provider but not a payment we can read: answered 400, no alert
    (nobody forged it, so it is a bug to look at, not an attack to report)."""
