"""Money helpers: Decimal only, quantised at the edges.

USD is kept to the cent; crypto keeps the provider's precision (BTC 8, USDT 6).
"""

from __future__ import annotations

from decimal import ROUND_DOWN, ROUND_UP, Decimal, InvalidOperation

CENT = Decimal("0.01")
USD = "USD"

# Places each crypto asset is quoted in (SPEC §4: keep the provider's precision).
CRYPTO_PLACES: dict[str, int] = {
    "BTC": 8,
    "USDT": 6,
    "ETH": 8,
    "LTC": 8,
    "TON": 9,
    "USDC": 6,
}


def ceil_cents(amount: Decimal) -> Decimal:
    """Round up to the cent: the buyer never pays less than the cost."""
    return amount.quantize(CENT, rounding=ROUND_UP)


def floor_cents(amount: Decimal) -> Decimal:
    return amount.quantize(CENT, rounding=ROUND_DOWN)


def crypto_places(asset: str) -> int:
    return CRYPTO_PLACES.get(asset, 8)


def quantize_crypto(amount: Decimal, asset: str) -> Decimal:
    return amount.quantize(Decimal(1).scaleb(-crypto_places(asset)), rounding=ROUND_UP)


def to_decimal(value: object) -> Decimal:
    """Parse a provider value (str, int or Decimal) into Decimal; floats are refused."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"not an amount: {value!r}")
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int | str):
        try:
            result = Decimal(value)
        except InvalidOperation as exc:
            raise ValueError(f"not an amount: {value!r}") from exc
        if not result.is_finite():
            raise ValueError(f"not an amount: {value!r}")
        return result
    raise ValueError(f"not an amount (parse JSON with parse_float=Decimal): {value!r}")


class Usd(str):
    """A USD amount, written in English (``$1,234.56``, always two places) and keeping
    its value, so a template of another language rewrites it (locales.Translator)."""

    amount: Decimal

    def __new__(cls, amount: Decimal) -> Usd:
        text = super().__new__(cls, f"${amount.quantize(CENT):,}")
        text.amount = amount
        return text


class Number(str):
    """A count or quantity, written in English (``1,100,000``) and keeping its value,
    so a template of another language rewrites it (``1 100 000`` in Russian)."""

    value: int | Decimal

    def __new__(cls, value: int | Decimal) -> Number:
        text = super().__new__(cls, f"{value:,}")
        text.value = value
        return text


def format_usd(amount: Decimal) -> Usd:
    return Usd(amount)


def format_tokens(tokens: int) -> Number:
    return Number(tokens)


def format_count(value: int | Decimal) -> Number:
    return Number(value)


def format_crypto(amount: Decimal, asset: str) -> str:
    """The provider's precision, no grouping, "." as the decimal mark, in every language:
    the buyer copies it into a wallet, which would refuse "0,000 12" or "1.234,5"."""
    places = crypto_places(asset)
    return f"{amount.quantize(Decimal(1).scaleb(-places)):f}"
