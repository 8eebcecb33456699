"""The providers the bot knows: each one's settings, production requirements and factory.

The one place that lists providers. Adding one: its module under services/payments/
with a settings class (its SPEC §7 variables), ``required_settings`` and ``build``,
then a line in ``PaymentSettings`` and in ``PROVIDERS``. Nothing else names it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from services.payments import cryptopay, cryptopay_provider, kryptoexpress
from services.payments.base import PaymentProvider

log = logging.getLogger(__name__)


class PaymentSettings(cryptopay.CryptoPaySettings, kryptoexpress.KryptoExpressSettings):
    """Every provider's own settings, composed into the bot's Settings (flat, so the
    environment names stay those of SPEC §7). Validator names must be unique across
    providers and Settings: a subclass's method of the same name replaces it."""


@dataclass(frozen=True)
class ProviderSpec:
    # (variable, value) pairs a real run using the provider must set.
    required: Callable[[PaymentSettings], list[tuple[str, object]]]
    # Settings and callback URL → the provider, or None while it is not configured.
    # None itself: known to PAYMENT_PROVIDERS but not built yet.
    build: Callable[[PaymentSettings, str | None], PaymentProvider | None] | None = None


PROVIDERS: dict[str, ProviderSpec] = {
    kryptoexpress.NAME: ProviderSpec(kryptoexpress.required_settings, kryptoexpress.build),
    cryptopay.NAME: ProviderSpec(cryptopay_provider.required_settings, cryptopay_provider.build),
}
# PAYMENT_PROVIDERS when unset: the primary provider (SPEC §3). Crypto Pay is opt-in
# (PAYMENT_PROVIDERS=kryptoexpress,cryptopay): listing it makes CRYPTO_PAY_TOKEN required.
DEFAULT_PROVIDERS = (kryptoexpress.NAME,)


def required_settings(settings: PaymentSettings, names: Sequence[str]) -> list[tuple[str, object]]:
    return [pair for name in names for pair in PROVIDERS[name].required(settings)]


def build_providers(
    settings: PaymentSettings,
    names: Sequence[str],
    callback_url: Callable[[str], str | None],
) -> dict[str, PaymentProvider]:
    """The configured providers in ``names`` order (the fallback order); the others are
    skipped with a WARNING, since a listed provider that never invoices is a surprise."""
    providers: dict[str, PaymentProvider] = {}
    for name in names:
        spec = PROVIDERS[name]
        if spec.build is None:
            log.warning("provider_skipped provider=%s reason=not_implemented", name)
            continue
        provider = spec.build(settings, callback_url(name))
        if provider is None:
            log.warning("provider_skipped provider=%s reason=not_configured", name)
            continue
        providers[name] = provider
    return providers
