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

from transforms.errors import UnknownCurrency

# Lake money columns: decimal(38, 6) in a currency's major unit.
MONEY_SCALE = 6
MONEY_QUANTUM = Decimal(1).scaleb(-MONEY_SCALE)

INTERVALS = ("day", "week", "month", "year")


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


def minor_unit(currency: str) -> Decimal:
    """The currency's smallest amount in its major unit: 0.01 USD, 1 JPY, 0.001 KWD."""
    return Decimal(1).scaleb(-currency_exponent(currency))


def format_money(value: Decimal | int | str, currency: str) -> str:
    """``1234.5`` USD -> ``'1,234.50 USD'``; JPY shows no decimals, KWD three (its ISO 4217 exponent)."""
    exponent = currency_exponent(currency)
    amount = Decimal(value).quantize(minor_unit(currency))
    return f"{amount:,.{exponent}f} {currency}"


def format_quantity(value: Decimal | int | str) -> str:
    """A usage quantity as people read it: ``2798362.000000000`` -> ``'2,798,362'``, ``1.50`` -> ``'1.5'``."""
    amount = Decimal(value)
    if amount == amount.to_integral_value():
        return f"{amount.to_integral_value():,f}"
    text = f"{amount.normalize():,f}"
    return text
