"""Pricing rules of SPEC §1 (services/pricing.py) and the money helpers (core/money.py)."""

from __future__ import annotations

import re
import string
from decimal import Decimal

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from core.money import (
    ceil_cents,
    crypto_places,
    floor_cents,
    format_crypto,
    format_tokens,
    format_usd,
    quantize_crypto,
    to_decimal,
)
from locales import Phrase
from services.errors import InvalidAmount, ModelUnavailable
from services.pricing import (
    AITokenService,
    ModelPrice,
    PricingRules,
    parse_token_count,
    round_down_2_significant,
)

FAST = settings(max_examples=200, deadline=None)
CENTS_EXPONENT = -2
SEPARATORS = set(" \u00a0\u202f,'_")


def model(completion: Decimal | str, prompt: Decimal | str = "0.000001") -> ModelPrice:
    return ModelPrice(
        id="vendor/model", name="Model", prompt=Decimal(prompt), completion=Decimal(completion)
    )


def service(**rules: object) -> AITokenService:
    return AITokenService(PricingRules(**rules))  # type: ignore[arg-type]


def significant_digits(n: int) -> int:
    return len(str(n).rstrip("0"))


def has_two_places(amount: Decimal) -> bool:
    return amount.as_tuple().exponent == CENTS_EXPONENT


# Completion prices from $1e-9 to $1e-3 per token, built from integers (exact decimals).
completion_prices = st.integers(min_value=1, max_value=10**6).map(lambda n: Decimal(n).scaleb(-9))
markups = st.integers(min_value=0, max_value=100).map(Decimal)

SPEC_MODEL = model("0.000015", prompt="0.000003")


# --------------------------------------------------------------------- SPEC §1 example
def test_spec_example_packages_at_15_dollars_per_million() -> None:
    packages = service().packages(SPEC_MODEL)
    got = [(p.name, p.quote.tokens, p.quote.total_usd) for p in packages]
    assert got == [
        ("starter", 110_000, Decimal("1.98")),
        ("standard", 270_000, Decimal("4.86")),
        ("professional", 550_000, Decimal("9.90")),
        ("enterprise", 1_100_000, Decimal("19.80")),
    ]
    starter = packages[0].quote
    assert starter.base_usd == Decimal("1.65")
    assert starter.markup_usd == Decimal("0.33")
    assert starter.unit_price == Decimal("0.000015")
    assert starter.model_id == "vendor/model"


def test_spec_example_bounds_and_formatted_refusals() -> None:
    svc = service()
    bounds = svc.bounds(SPEC_MODEL)
    assert bounds is not None
    assert bounds.min_total >= Decimal("1.00")
    assert bounds.max_total <= Decimal("20.00")
    with pytest.raises(InvalidAmount) as small:
        svc.quote(SPEC_MODEL, 1000)
    assert small.value.key == "amount.too_small"
    assert small.value.params["min_tokens"] == Phrase("unit.tokens", count=bounds.min_tokens)
    assert small.value.params["max_tokens"] == Phrase("unit.tokens", count=bounds.max_tokens)
    assert "," in str(small.value.params["max_tokens"])


def test_brief_fixed_packages_are_all_under_the_minimum_so_none_is_offered() -> None:
    svc = service(token_packages=(1000, 5000, 10000, 20000))
    assert svc.packages(SPEC_MODEL) == []
    for tokens in (1000, 5000, 10000, 20000):
        assert svc.price(SPEC_MODEL, tokens).total_usd < Decimal("1")


def test_fixed_packages_within_bounds_are_offered_and_the_rest_dropped() -> None:
    svc = service(token_packages=(20000, 100_000, 500_000, 1_000_000, 2_000_000))
    packages = svc.packages(SPEC_MODEL)
    assert [(p.name, p.quote.tokens) for p in packages] == [
        ("starter", 100_000),
        ("standard", 500_000),
        ("enterprise", 1_000_000),
    ]
    for package in packages:
        assert Decimal("1") <= package.quote.total_usd <= Decimal("20")


@pytest.mark.parametrize(
    ("points", "names"),
    [
        ((Decimal("20"),), ["enterprise"]),
        ((Decimal("5"), Decimal("20")), ["starter", "enterprise"]),
        ((Decimal("2"), Decimal("5"), Decimal("20")), ["starter", "standard", "enterprise"]),
    ],
)
def test_fewer_price_points_still_name_the_largest_enterprise(
    points: tuple[Decimal, ...], names: list[str]
) -> None:
    packages = service(package_prices_usd=points).packages(SPEC_MODEL)
    assert [p.name for p in packages] == names
    assert packages[-1].quote.tokens == max(p.quote.tokens for p in packages)


def test_price_point_above_the_cap_is_held_to_the_cap() -> None:
    packages = service(package_prices_usd=(Decimal("50"),)).packages(SPEC_MODEL)
    assert [(p.name, p.quote.tokens) for p in packages] == [("enterprise", 1_100_000)]


@pytest.mark.parametrize("completion", ["0", "-0.000001"])
def test_zero_or_negative_completion_price_is_not_sellable(completion: str) -> None:
    svc = service()
    bad = model(completion)
    assert not bad.sellable
    with pytest.raises(ModelUnavailable):
        svc.price(bad, 1000)
    with pytest.raises(ModelUnavailable):
        svc.quote(bad, 1000)
    assert svc.bounds(bad) is None
    assert svc.packages(bad) == []


def test_negative_prompt_price_is_not_sellable() -> None:
    bad = model("0.000015", prompt="-0.000001")
    with pytest.raises(ModelUnavailable):
        service().quote(bad, 100_000)


def test_model_too_expensive_for_the_cap_is_not_orderable() -> None:
    svc = service()
    dear = model("1")  # 100 tokens (the minimum) cost $120
    assert svc.bounds(dear) is None
    assert svc.packages(dear) == []
    with pytest.raises(ModelUnavailable):
        svc.quote(dear, 100)


# ---------------------------------------------------------------------- properties
@FAST
@given(completion=completion_prices, markup=markups, tokens=st.integers(0, 10**11))
@example(completion=Decimal("0.000015"), markup=Decimal(20), tokens=110_000)
def test_price_rounds_up_to_the_cent_twice(
    completion: Decimal, markup: Decimal, tokens: int
) -> None:
    quote = service(markup_percent=markup).price(model(completion), tokens)
    exact_base = tokens * completion
    assert quote.base_usd >= exact_base
    assert quote.base_usd - exact_base < Decimal("0.01")
    assert quote.base_usd == ceil_cents(exact_base)
    exact_total = quote.base_usd * (1 + markup / 100)
    assert quote.total_usd >= exact_total
    assert quote.total_usd - exact_total < Decimal("0.01")
    assert quote.total_usd == ceil_cents(exact_total)
    assert quote.markup_usd == quote.total_usd - quote.base_usd
    for amount in (quote.base_usd, quote.markup_usd, quote.total_usd):
        assert amount >= 0
        assert has_two_places(amount), amount
    assert quote.tokens == tokens
    assert quote.unit_price == completion


@FAST
@given(
    completion=completion_prices,
    markup=markups,
    tokens=st.integers(0, 10**10),
    more=st.integers(1, 10**9),
)
def test_total_is_monotone_in_tokens(
    completion: Decimal, markup: Decimal, tokens: int, more: int
) -> None:
    svc = service(markup_percent=markup)
    m = model(completion)
    assert svc.price(m, tokens).total_usd <= svc.price(m, tokens + 1).total_usd
    assert svc.price(m, tokens).total_usd <= svc.price(m, tokens + more).total_usd


@FAST
@given(
    completion=completion_prices,
    markup=markups,
    offset=st.integers(-1000, 1000),
    anywhere=st.integers(-(10**12), 10**12),
    min_order=st.sampled_from(["0", "0.5", "1", "3"]),
    max_order=st.sampled_from(["5", "20", "100"]),
    min_tokens=st.sampled_from([1, 100, 5000]),
)
def test_bounds_are_tight_and_quote_stays_inside_them(
    completion: Decimal,
    markup: Decimal,
    offset: int,
    anywhere: int,
    min_order: str,
    max_order: str,
    min_tokens: int,
) -> None:
    rules = PricingRules(
        markup_percent=markup,
        min_order_usd=Decimal(min_order),
        max_order_usd=Decimal(max_order),
        min_tokens=min_tokens,
    )
    svc = AITokenService(rules)
    m = model(completion)
    bounds = svc.bounds(m)
    assume(bounds is not None)
    assert bounds is not None
    lo, hi = bounds.min_tokens, bounds.max_tokens
    assert rules.min_tokens <= lo <= hi

    # Both ends are orderable and priced as reported...
    assert svc.quote(m, lo).total_usd == bounds.min_total >= rules.min_order_usd
    assert svc.quote(m, hi).total_usd == bounds.max_total <= rules.max_order_usd
    # ...and one step further out is refused with the range, thousands-separated.
    with pytest.raises(InvalidAmount) as below:
        svc.quote(m, lo - 1)
    assert below.value.key == "amount.too_small"
    assert below.value.params["min_tokens"] == Phrase("unit.tokens", count=lo)
    assert below.value.params["max_tokens"] == Phrase("unit.tokens", count=hi)
    assert lo - 1 < rules.min_tokens or svc.price(m, lo - 1).total_usd < rules.min_order_usd
    with pytest.raises(InvalidAmount) as above:
        svc.quote(m, hi + 1)
    assert above.value.key == "amount.too_large"
    assert above.value.params["min_tokens"] == Phrase("unit.tokens", count=lo)
    assert above.value.params["max_tokens"] == Phrase("unit.tokens", count=hi)
    assert svc.price(m, hi + 1).total_usd > rules.max_order_usd

    # Any count, near either bound or anywhere: a quote is always within the rules.
    for tokens in (lo + offset, hi + offset, anywhere):
        try:
            quote = svc.quote(m, tokens)
        except InvalidAmount as exc:
            assert exc.key in {"amount.too_small", "amount.too_large"}
            assert not lo <= tokens <= hi
            continue
        assert lo <= tokens <= hi
        assert quote.tokens >= rules.min_tokens
        assert rules.min_order_usd <= quote.total_usd <= rules.max_order_usd


@FAST
@given(completion=completion_prices, markup=markups)
@example(completion=Decimal("0.000015"), markup=Decimal(20))
def test_packages_fit_their_price_points(completion: Decimal, markup: Decimal) -> None:
    rules = PricingRules(markup_percent=markup)
    svc = AITokenService(rules)
    m = model(completion)
    packages = svc.packages(m)
    bounds = svc.bounds(m)
    tokens = [p.quote.tokens for p in packages]
    assert tokens == sorted(set(tokens))
    if packages:
        assert packages[-1].name == "enterprise"
        assert len({p.name for p in packages}) == len(packages)
    for package in packages:
        quote = package.quote
        assert bounds is not None
        assert bounds.min_tokens <= quote.tokens <= bounds.max_tokens
        assert significant_digits(quote.tokens) <= 2
        # Its price point: the smallest one it fits under (the one it was sized from).
        assert any(quote.total_usd <= point for point in rules.package_prices_usd)
        assert rules.min_order_usd <= quote.total_usd <= rules.max_order_usd
        assert quote == svc.quote(m, quote.tokens)
    # Sized from the price points in order: the i-th package fits under the i-th point.
    if len(packages) == len(rules.package_prices_usd):
        for package, point in zip(packages, rules.package_prices_usd, strict=True):
            assert package.quote.total_usd <= point


# ------------------------------------------------------------ round_down_2_significant
@pytest.mark.parametrize(
    ("tokens", "rounded"),
    [
        (1_111_111, 1_100_000),
        (54_667, 54_000),
        (99, 99),
        (100, 100),
        (109, 100),
        (110_666, 110_000),
    ],
)
def test_round_down_2_significant_examples(tokens: int, rounded: int) -> None:
    assert round_down_2_significant(tokens) == rounded


@FAST
@given(st.integers(min_value=1, max_value=10**20))
def test_round_down_2_significant_is_the_largest_two_digit_count_not_above(n: int) -> None:
    r = round_down_2_significant(n)
    assert 0 < r <= n
    assert significant_digits(r) <= 2
    assert len(str(r)) == len(str(n))
    if n >= 100:
        step = 10 ** (len(str(n)) - 2)
        assert r % step == 0
        assert n - r < step
    else:
        assert r == n


# ------------------------------------------------------------------ parse_token_count
@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("abc", "amount.not_a_number"),
        ("-5", "amount.negative"),
        ("12.5", "amount.not_whole"),
        ("12,5", "amount.not_whole"),
        ("0", "amount.zero"),
        ("", "amount.not_a_number"),
        ("   ", "amount.not_a_number"),
        ("١٢٣", "amount.not_a_number"),  # Arabic-Indic digits
        ("１２３", "amount.not_a_number"),  # fullwidth digits
        ("²", "amount.not_a_number"),  # superscript two
        ("12 34", "amount.not_a_number"),  # not groups of three
        ("1e5", "amount.not_a_number"),
    ],
)
def test_parse_token_count_reasons(text: str, key: str) -> None:
    with pytest.raises(InvalidAmount) as refused:
        parse_token_count(text)
    assert refused.value.key == key


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("250000", 250_000),
        (" 250000 ", 250_000),
        ("250 000", 250_000),
        ("250,000", 250_000),
        ("1 000 000", 1_000_000),
        ("250_000", 250_000),
        ("250\u00a0000", 250_000),
        ("\t5000\n", 5000),
    ],
)
def test_parse_token_count_accepts(text: str, tokens: int) -> None:
    assert parse_token_count(text) == tokens
    assert AITokenService(PricingRules()).parse_custom_amount(text) == tokens


def test_a_5000_digit_number_does_not_crash_and_is_refused_as_too_large() -> None:
    huge = parse_token_count("9" * 5000)
    assert huge > 10**12
    svc = service()
    with pytest.raises(InvalidAmount) as refused:
        svc.quote(SPEC_MODEL, huge)
    assert refused.value.key == "amount.too_large"
    assert str(refused.value.params["max_tokens"]) == "1,110,666 tokens"


def test_leading_zeros_do_not_count_as_digits() -> None:
    assert parse_token_count("0" * 100 + "5000") == 5000
    with pytest.raises(InvalidAmount) as refused:
        parse_token_count("0" * 100)
    assert refused.value.key == "amount.zero"


@pytest.mark.parametrize("text", ["0" * 5000 + "5000", "0" * 5000])
def test_thousands_of_leading_zeros_are_not_a_crash(text: str) -> None:
    try:
        assert parse_token_count(text) == 5000
    except InvalidAmount as refused:
        assert refused.key == "amount.zero"


ALLOWED = frozenset(string.digits) | SEPARATORS


@FAST
@given(st.text())
@example("²")
@example("١٢٣")
@example("-" * 3000)
@example("1" * 100_000)
def test_parse_token_count_on_arbitrary_text(text: str) -> None:
    try:
        tokens = parse_token_count(text)
    except InvalidAmount:
        return
    assert tokens > 0
    stripped = text.strip()
    assert stripped
    assert set(stripped) <= ALLOWED, stripped
    assert stripped[0] in string.digits
    assert stripped[-1] in string.digits


@FAST
@given(st.integers(min_value=1, max_value=10**14), st.sampled_from(sorted(SEPARATORS)))
def test_parse_token_count_reads_what_format_tokens_writes(n: int, sep: str) -> None:
    assert parse_token_count(str(n)) == n
    assert parse_token_count(format_tokens(n).replace(",", sep)) == n


# ----------------------------------------------------------------------- money helpers
def test_ceil_and_floor_cents() -> None:
    assert ceil_cents(Decimal("1.001")) == Decimal("1.01")
    assert ceil_cents(Decimal("1.00")) == Decimal("1.00")
    assert ceil_cents(Decimal("0.000000001")) == Decimal("0.01")
    assert floor_cents(Decimal("1.019")) == Decimal("1.01")
    assert has_two_places(ceil_cents(Decimal(3)))


@FAST
@given(st.integers(0, 10**15), st.integers(0, 12))
def test_ceil_cents_is_the_smallest_cent_not_below(units: int, places: int) -> None:
    amount = Decimal(units).scaleb(-places)
    up, down = ceil_cents(amount), floor_cents(amount)
    assert has_two_places(up) and has_two_places(down)
    assert down <= amount <= up
    assert up - down in {Decimal(0), Decimal("0.01")}
    assert (up == down) == (amount == up)


@pytest.mark.parametrize("value", [1.5, True, None, "abc", "NaN", "Infinity", object()])
def test_to_decimal_refuses_floats_and_junk(value: object) -> None:
    with pytest.raises(ValueError):
        to_decimal(value)


def test_to_decimal_keeps_every_digit() -> None:
    assert to_decimal("0.00018486") == Decimal("0.00018486")
    assert str(to_decimal("16.310")) == "16.310"
    assert to_decimal(20) == Decimal(20)
    assert to_decimal(Decimal("1.5")) == Decimal("1.5")


def test_formatting() -> None:
    assert format_usd(Decimal("1234.5")) == "$1,234.50"
    assert format_usd(Decimal("19.8")) == "$19.80"
    assert format_tokens(1_100_000) == "1,100,000"
    assert crypto_places("BTC") == 8
    assert crypto_places("USDT") == 6
    assert crypto_places("UNKNOWN") == 8
    assert quantize_crypto(Decimal("0.000184861"), "BTC") == Decimal("0.00018487")
    assert quantize_crypto(Decimal("1.0000001"), "USDT") == Decimal("1.000001")
    assert format_crypto(Decimal("0.0001"), "BTC") == "0.00010000"
    assert re.fullmatch(r"\d+\.\d{6}", format_crypto(Decimal("12"), "USDT"))
