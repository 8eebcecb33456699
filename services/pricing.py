"""AITokenService: packages, custom amounts and quotes — the money rules of SPEC §1.

Pure logic over Decimal; no I/O. A quote prices tokens at the model's completion
price (base, rounded up to the cent), adds the markup and rounds the total up to the
cent. The total is monotone in the token count, so bounds are found by bisection.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from core.money import ceil_cents, format_usd
from locales import Phrase
from services.errors import InvalidAmount, ModelUnavailable

PACKAGE_NAMES = ("starter", "standard", "professional", "enterprise")
# Custom amounts longer than this are certainly over any cap; refuse before arithmetic.
MAX_DIGITS = 15


@dataclass(frozen=True)
class PricingRules:
    markup_percent: Decimal = Decimal("20")
    min_order_usd: Decimal = Decimal("1")
    max_order_usd: Decimal = Decimal("20")
    min_tokens: int = 100
    package_prices_usd: tuple[Decimal, ...] = (
        Decimal("2"),
        Decimal("5"),
        Decimal("10"),
        Decimal("20"),
    )
    token_packages: tuple[int, ...] = ()

    @property
    def markup_factor(self) -> Decimal:
        return 1 + self.markup_percent / Decimal(100)


@dataclass(frozen=True)
class ModelPrice:
    """A model OpenRouter lists, with its per-token prices in USD."""

    id: str
    name: str
    prompt: Decimal
    completion: Decimal

    @property
    def sellable(self) -> bool:
        return self.completion > 0 and self.prompt >= 0


@dataclass(frozen=True)
class PriceQuote:
    model_id: str
    model_name: str
    tokens: int
    unit_price: Decimal
    base_usd: Decimal
    markup_usd: Decimal
    total_usd: Decimal


@dataclass(frozen=True)
class Package:
    name: str  # locale key suffix: starter / standard / professional / enterprise
    quote: PriceQuote


@dataclass(frozen=True)
class Bounds:
    min_tokens: int
    max_tokens: int
    min_total: Decimal
    max_total: Decimal


# Bounds and packages are pure functions of (rules, model) but cost a bisection of ~50
# Decimal totals each, and every buy-flow update asks for them (the current model is
# chosen among those with bounds). Kept per (rules, model): a repriced model is another
# ModelPrice, so a price change from the catalog is a new key, never a stale answer.
CACHE_SIZE = 512


class AITokenService:
    def __init__(self, rules: PricingRules) -> None:
        self.rules = rules
        self._bounds: dict[tuple[PricingRules, ModelPrice], Bounds | None] = {}
        self._packages: dict[tuple[PricingRules, ModelPrice], tuple[Package, ...]] = {}

    # ------------------------------------------------------------------ pricing
    def price(self, model: ModelPrice, tokens: int) -> PriceQuote:
        """Price ``tokens`` of ``model``; no bounds check (see ``quote``)."""
        if not model.sellable:
            raise ModelUnavailable(model=model.id)
        base = ceil_cents(tokens * model.completion)
        total = ceil_cents(base * self.rules.markup_factor)
        return PriceQuote(
            model_id=model.id,
            model_name=model.name,
            tokens=tokens,
            unit_price=model.completion,
            base_usd=base,
            markup_usd=total - base,
            total_usd=total,
        )

    def bounds(self, model: ModelPrice) -> Bounds | None:
        """Smallest and largest orderable token counts, or None if none is orderable."""
        key = (self.rules, model)
        if key not in self._bounds:
            _bounded_put(self._bounds, key, self._find_bounds(model))
        return self._bounds[key]

    def _find_bounds(self, model: ModelPrice) -> Bounds | None:
        if not model.sellable:
            return None
        rules = self.rules
        # Upper search limit: enough tokens that even the base alone exceeds the cap.
        hi = int(rules.max_order_usd / model.completion) + 2
        largest = self._last_true(1, hi, lambda t: self._total(model, t) <= rules.max_order_usd)
        if largest is None:
            return None
        smallest = self._first_true(
            rules.min_tokens,
            max(largest, rules.min_tokens),
            lambda t: self._total(model, t) >= rules.min_order_usd,
        )
        if smallest is None or smallest > largest:
            return None
        return Bounds(smallest, largest, self._total(model, smallest), self._total(model, largest))

    def quote(self, model: ModelPrice, tokens: int) -> PriceQuote:
        """A quote within the rules, or InvalidAmount naming the allowed range."""
        bounds = self.bounds(model)
        if bounds is None:
            raise ModelUnavailable(model=model.id)
        if tokens < bounds.min_tokens:
            raise InvalidAmount("amount.too_small", **self._bound_params(bounds))
        if tokens > bounds.max_tokens:
            raise InvalidAmount("amount.too_large", **self._bound_params(bounds))
        return self.price(model, tokens)

    def packages(self, model: ModelPrice) -> list[Package]:
        """The packages offered for ``model`` (SPEC §1), smallest first."""
        key = (self.rules, model)
        if key not in self._packages:
            _bounded_put(self._packages, key, tuple(self._find_packages(model)))
        return list(self._packages[key])

    def _find_packages(self, model: ModelPrice) -> list[Package]:
        bounds = self.bounds(model)
        if bounds is None:
            return []
        counts: list[int] = []
        if self.rules.token_packages:
            counts = [
                t for t in self.rules.token_packages if bounds.min_tokens <= t <= bounds.max_tokens
            ]
        else:
            for point in self.rules.package_prices_usd:
                ceiling = min(point, self.rules.max_order_usd)

                def within(tokens: int, cap: Decimal = ceiling) -> bool:
                    return self._total(model, tokens) <= cap

                fits = self._last_true(bounds.min_tokens, bounds.max_tokens, within)
                if fits is None:
                    continue
                tokens = round_down_2_significant(fits)
                if tokens >= bounds.min_tokens:
                    counts.append(tokens)
        counts = sorted(set(counts))
        names = _package_names(len(counts))
        return [Package(name, self.price(model, t)) for name, t in zip(names, counts, strict=True)]

    # ---------------------------------------------------------------- parsing
    def parse_custom_amount(self, text: str) -> int:
        """A whole token count typed by the buyer, or InvalidAmount with the reason."""
        return parse_token_count(text)

    # ---------------------------------------------------------------- helpers
    def _total(self, model: ModelPrice, tokens: int) -> Decimal:
        base = ceil_cents(tokens * model.completion)
        return ceil_cents(base * self.rules.markup_factor)

    @staticmethod
    def _last_true(lo: int, hi: int, pred: Callable[[int], bool]) -> int | None:
        """Largest t in [lo, hi] with pred(t), for a predicate true then false."""
        if lo > hi or not pred(lo):
            return None
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if pred(mid):
                lo = mid
            else:
                hi = mid - 1
        return lo

    @staticmethod
    def _first_true(lo: int, hi: int, pred: Callable[[int], bool]) -> int | None:
        """Smallest t in [lo, hi] with pred(t), for a predicate false then true."""
        if lo > hi or not pred(hi):
            return None
        while lo < hi:
            mid = (lo + hi) // 2
            if pred(mid):
                hi = mid
            else:
                lo = mid + 1
        return lo

    @staticmethod
    def _bound_params(bounds: Bounds) -> dict[str, object]:
        return {
            "min_tokens": Phrase("unit.tokens", count=bounds.min_tokens),
            "max_tokens": Phrase("unit.tokens", count=bounds.max_tokens),
            "min_total": format_usd(bounds.min_total),
            "max_total": format_usd(bounds.max_total),
        }


def _bounded_put(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) >= CACHE_SIZE:
        cache.clear()  # a catalog repriced many times over: start afresh
    cache[key] = value


def round_down_2_significant(tokens: int) -> int:
    """1,111,111 → 1,100,000; 54,667 → 54,000; 99 → 99."""
    if tokens < 100:
        return tokens
    step: int = 10 ** (len(str(tokens)) - 2)
    return tokens // step * step


def _package_names(count: int) -> list[str]:
    # The largest package is always Enterprise; the others take names from the start.
    if count == 0:
        return []
    if count <= len(PACKAGE_NAMES):
        return [*PACKAGE_NAMES[: count - 1], PACKAGE_NAMES[-1]]
    extra = [f"package_{i}" for i in range(count - len(PACKAGE_NAMES))]
    return [*PACKAGE_NAMES[:-1], *extra, PACKAGE_NAMES[-1]]


# Group separators a buyer may type inside a number: space, NBSP, narrow NBSP,
# comma, apostrophe, underscore. Only in groups of three, so "12,5" stays a decimal.
_GROUPED = re.compile(r"[0-9]{1,3}(?:[ \u00a0\u202f,'_][0-9]{3})+", re.ASCII)
_DIGITS = re.compile(r"[0-9]+", re.ASCII)
_DECIMAL = re.compile(r"[0-9]*[.,][0-9]+", re.ASCII)
_NEGATIVE = re.compile(r"[-−‒–][ ]?[0-9][0-9 .,]*", re.ASCII)


def parse_token_count(text: str) -> int:
    raw = text.strip()
    if not raw:
        raise InvalidAmount("amount.not_a_number")
    if _DIGITS.fullmatch(raw) or _GROUPED.fullmatch(raw):
        digits = re.sub(r"[^0-9]", "", raw, flags=re.ASCII)
        if len(digits.lstrip("0")) > MAX_DIGITS:
            # Certainly over the cap; the quote step names the allowed range.
            return int(10**MAX_DIGITS)
        # Strip zeros first: int() refuses strings over 4,300 digits.
        value = int(digits.lstrip("0") or "0")
        if value == 0:
            raise InvalidAmount("amount.zero")
        return value
    if _NEGATIVE.fullmatch(raw):
        raise InvalidAmount("amount.negative")
    if _DECIMAL.fullmatch(raw):
        raise InvalidAmount("amount.not_whole")
    raise InvalidAmount("amount.not_a_number")
