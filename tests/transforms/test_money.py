"""Money rules: ISO 4217 exponents, exact MRR normalisation, rounding, formatting by minor unit."""

from decimal import Decimal
from fractions import Fraction

import pytest

from transforms.errors import ConfigError, UnknownCurrency
from transforms.money import (
    currency_exponent,
    format_money,
    format_quantity,
    minor_unit,
    monthly_factor,
    mrr_minor_exact,
    round_to_minor,
)


@pytest.mark.parametrize(("code", "exponent"), [("USD", 2), ("usd", 2), ("JPY", 0), ("KWD", 3), ("CLF", 4)])
def test_exponents_come_from_iso_4217(code, exponent):
    assert currency_exponent(code) == exponent


@pytest.mark.parametrize("code", ["XYZ", "XAU", "", "US"])
def test_unknown_or_minorless_currency_is_a_config_error(code):
    with pytest.raises(UnknownCurrency) as info:
        currency_exponent(code)
    assert isinstance(info.value, ConfigError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize(("interval", "count", "factor"), [
    ("month", 1, Fraction(1)), ("month", 3, Fraction(1, 3)), ("year", 1, Fraction(1, 12)),
    ("year", 2, Fraction(1, 24)), ("week", 1, Fraction(52, 12)), ("day", 1, Fraction(365, 12)),
])  # fmt: skip
def test_monthly_factor_is_exact(interval, count, factor):
    assert monthly_factor(interval, count) == factor


def test_monthly_factor_rejects_bad_input():
    with pytest.raises(ValueError):
        monthly_factor("month", 0)
    with pytest.raises(ValueError):
        monthly_factor("fortnight", 1)


def test_mrr_is_exact_before_rounding():
    assert mrr_minor_exact(1000, 3, "year", 1) == Fraction(250)
    assert mrr_minor_exact(999, 1, "week", 1) == Fraction(999 * 52, 12)


@pytest.mark.parametrize(("value", "currency", "expected"), [
    (Fraction(1, 200), "USD", Decimal("0.01")),      # half a cent rounds away from zero
    (Fraction(-1, 200), "USD", Decimal("-0.01")),
    (Fraction(1, 2), "JPY", Decimal("1")),
    (Fraction(12345, 10000), "KWD", Decimal("1.235")),
    (Decimal("2.994999"), "USD", Decimal("2.99")),
])  # fmt: skip
def test_round_to_minor_is_half_away_from_zero(value, currency, expected):
    assert round_to_minor(value, currency) == expected


def test_minor_unit():
    assert minor_unit("USD") == Decimal("0.01") and minor_unit("JPY") == Decimal(1)
    assert minor_unit("KWD") == Decimal("0.001")


@pytest.mark.parametrize(("value", "currency", "text"), [
    (Decimal("1234567.891"), "USD", "1,234,567.89 USD"),
    (Decimal("1234567.5"), "JPY", "1,234,568 JPY"),
    (Decimal("1234.5675"), "KWD", "1,234.568 KWD"),
    (Decimal("-0.5"), "USD", "-0.50 USD"),
    ("0", "JPY", "0 JPY"),
])  # fmt: skip
def test_format_money_uses_the_currency_minor_unit(value, currency, text):
    assert format_money(value, currency) == text


@pytest.mark.parametrize(("value", "text"), [
    (Decimal("2798362.000000000"), "2,798,362"), (Decimal("1.500000000"), "1.5"), (Decimal("0E-9"), "0"),
    (12, "12"), (Decimal("1234.000000001"), "1,234.000000001"),
])  # fmt: skip
def test_format_quantity_reads_like_a_number(value, text):
    assert format_quantity(value) == text

