"""Money rules, defined once: currencies, minor units, rounding, MRR normalisation.

Money is integer minor units on input and ``Decimal`` everywhere after; a float
never holds money. Rounding to a currency's minor unit is ROUND_HALF_UP (half
away from zero), the same rule DuckDB's ``round()`` applies, so Beam and dbt
agree to the cent.
"""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction
from functools import cache

from iso4217 import Currency

# Lake money columns: decimal(38, 6) in a currency's major unit.
MONEY_SCALE = 6
MONEY_QUANTUM = Decimal(1).scaleb(-MONEY_SCALE)

INTERVALS = ("day", "week", "month", "year")


class UnknownCurrency(ValueError):
    pass


@cache
def currency_exponent(code: str) -> int:
    """ISO 4217 minor-unit exponent (JPY 0, USD 2, KWD 3). Raises UnknownCurrency."""
    try:
        exponent = Currency(code.upper()).exponent
    except ValueError:
        raise UnknownCurrency(f"unknown ISO 4217 currency code {code!r}") from None
    if exponent is None:  # funds, metals, testing codes: not money we bill in
        raise UnknownCurrency(f"currency {code!r} has no minor unit in ISO 4217")
    return exponent


def is_known_currency(code: str) -> bool:
    try:
        currency_exponent(code)
    except UnknownCurrency:
        return False
    return True


def monthly_factor(interval: str, interval_count: int) -> Fraction:
    """Exact factor turning a per-interval price into a monthly one (CONTRACT section 2)."""
    if interval_count < 1:
        raise ValueError("interval_count must be >= 1")
    if interval == "month":
        return Fraction(1, interval_count)
    if interval == "year":
        return Fraction(1, 12 * interval_count)
    if interval == "week":
        return Fraction(52, 12 * interval_count)
    if interval == "day":
        return Fraction(365, 12 * interval_count)
    raise ValueError(f"unknown interval {interval!r}")


def mrr_minor_exact(unit_amount_minor: int, quantity: int, interval: str, interval_count: int) -> Fraction:
    """A subscription state's MRR in its own currency's minor units, exact."""
    return unit_amount_minor * quantity * monthly_factor(interval, interval_count)


def round_to_minor(value: Fraction | Decimal, currency: str) -> Decimal:
    """Round an exact major-unit amount to the currency's minor unit (half away from zero), exactly."""
    exponent = currency_exponent(currency)
    scaled = Fraction(value) * 10**exponent
    magnitude = math.floor(abs(scaled) + Fraction(1, 2))
    units = magnitude if scaled >= 0 else -magnitude
    return Decimal(units).scaleb(-exponent).quantize(MONEY_QUANTUM)


def minor_to_major(amount_minor: int, currency: str) -> Decimal:
    """Integer minor units to an exact Decimal in the major unit (1999 USD -> 19.99)."""
    return Decimal(amount_minor).scaleb(-currency_exponent(currency)).quantize(MONEY_QUANTUM)


def convert_minor(amount_minor: Fraction | int, currency: str, rate: Decimal, reporting_currency: str) -> Decimal:
    """Convert minor units of ``currency`` to the reporting currency's major unit, rounded to its minor unit."""
    exact = Fraction(amount_minor) / (10 ** currency_exponent(currency)) * Fraction(rate)
    return round_to_minor(exact, reporting_currency)
