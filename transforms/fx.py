"""FX rates: one unit of ``currency`` is worth ``rate`` units of the reporting currency
from ``date`` until that currency's next row (CONTRACT section 2).

The bundled table (``transforms/data/fx_rates.csv``) quotes rates against USD. For
another reporting currency, rates are crossed through USD: rate(C -> R) =
rate(C -> USD) / rate(R -> USD), rounded to 10 decimal places. A user's own file
(``--fx-rates``) is used exactly as given and must quote against the reporting
currency.
"""

from __future__ import annotations

import bisect
import csv
import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path

from transforms.errors import FxError, MissingFxRate
from transforms.money import currency_exponent
from transforms.schemas import FIRST_SUPPORTED_DAY, LAST_SUPPORTED_DAY

BUNDLED_BASE = "USD"
RATE_DECIMALS = 10  # the warehouse keeps rates as DECIMAL(28, 10): more digits would be rounded away
RATE_QUANTUM = Decimal(1).scaleb(-RATE_DECIMALS)
CROSS_QUANTUM = RATE_QUANTUM
# The metrics stage holds rates per minor unit as decimal(18, 15): a rate must stay below 1000
# reporting-currency units per minor unit (no real currency pair comes near it).
MAX_RATE_PER_MINOR_UNIT = Decimal(1000)



@dataclass
class FxTable:
    """Step-function rates per currency, quoted in ``reporting_currency``."""

    reporting_currency: str
    _dates: dict[str, list[dt.date]] = field(default_factory=dict)
    _rates: dict[str, list[Decimal]] = field(default_factory=dict)

    def rate(self, currency: str, day: dt.date) -> Decimal:
        currency = currency.upper()
        if currency == self.reporting_currency:
            return Decimal(1)
        dates = self._dates.get(currency)
        if not dates:
            raise MissingFxRate(currency, day, self.reporting_currency)
        i = bisect.bisect_right(dates, day) - 1
        if i < 0:
            raise MissingFxRate(currency, day, self.reporting_currency)
        return self._rates[currency][i]

    def rows(self) -> list[tuple[dt.date, str, Decimal]]:
        return [
            (d, c, r) for c in sorted(self._dates) for d, r in zip(self._dates[c], self._rates[c], strict=True)
        ]

    @classmethod
    def from_rows(cls, rows, reporting_currency: str) -> FxTable:
        table = cls(reporting_currency.upper())
        per_currency: dict[str, dict[dt.date, Decimal]] = {}
        for day, currency, rate in rows:
            per_currency.setdefault(currency, {})[day] = rate
        for currency, by_day in per_currency.items():
            days = sorted(by_day)
            table._dates[currency] = days
            table._rates[currency] = [by_day[d] for d in days]
        return table


def _parse_row(row: dict) -> tuple[dt.date, str, Decimal]:
    """One CSV row -> (day, currency, rate); raises ValueError with a message for people."""
    raw_day, raw_currency, raw_rate = (str(row.get(k) or "").strip() for k in ("date", "currency", "rate"))
    try:
        day = dt.date.fromisoformat(raw_day)
    except ValueError:
        raise ValueError(f"date {raw_day!r} is not YYYY-MM-DD") from None
    if not FIRST_SUPPORTED_DAY <= day <= LAST_SUPPORTED_DAY:
        raise ValueError(f"date {raw_day} is outside {FIRST_SUPPORTED_DAY}..{LAST_SUPPORTED_DAY}")
    currency = raw_currency.upper()
    currency_exponent(currency)  # UnknownCurrency is a ValueError with its own message
    try:
        rate = Decimal(raw_rate)
    except InvalidOperation:
        raise ValueError(f"rate {raw_rate!r} is not a number") from None
    if not rate.is_finite() or rate <= 0:
        raise ValueError(f"rate {raw_rate!r} must be a positive number")
    if rate.scaleb(-currency_exponent(currency)) >= MAX_RATE_PER_MINOR_UNIT:
        raise ValueError(f"rate {raw_rate!r} is implausibly large for {currency}")
    if rate != rate.quantize(RATE_QUANTUM):
        raise ValueError(f"rate {raw_rate!r} has more than {RATE_DECIMALS} decimal places")
    return day, currency, rate


def read_rates_csv(path: Path | str) -> list[tuple[dt.date, str, Decimal]]:
    """Parse ``date,currency,rate`` rows; any defect is an FxError naming file and line."""
    rows = []
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or not {"date", "currency", "rate"} <= set(reader.fieldnames):
                raise FxError(f"{path}: FX file needs the columns date,currency,rate")
            for line_no, row in enumerate(reader, start=2):
                try:
                    rows.append(_parse_row(row))
                except ValueError as exc:
                    raise FxError(f"{path}:{line_no}: bad FX row: {exc}") from None
    except OSError as exc:
        raise FxError(f"cannot read FX rates file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise FxError(f"cannot read FX rates file {path}: not UTF-8 text") from None
    except csv.Error as exc:
        raise FxError(f"cannot read FX rates file {path}: {exc}") from None
    if not rows:
        raise FxError(f"{path}: FX rates file has no rows")
    return rows


def bundled_rates_path() -> Path:
    return Path(str(resources.files("transforms") / "data" / "fx_rates.csv"))


def load_fx(reporting_currency: str = "USD", fx_rates_path: Path | str | None = None) -> FxTable:
    """The user's table as given, or the bundled USD table crossed to ``reporting_currency``."""
    reporting_currency = reporting_currency.upper()
    currency_exponent(reporting_currency)
    if fx_rates_path is not None:
        return FxTable.from_rows(read_rates_csv(fx_rates_path), reporting_currency)
    rows = read_rates_csv(bundled_rates_path())
    if reporting_currency == BUNDLED_BASE:
        return FxTable.from_rows(rows, reporting_currency)
    usd = FxTable.from_rows(rows, BUNDLED_BASE)
    crossed = []
    for day, currency, _ in rows + [(d, BUNDLED_BASE, Decimal(1)) for d in sorted({r[0] for r in rows})]:
        if currency == reporting_currency:
            continue
        try:
            base = usd.rate(reporting_currency, day)
        except MissingFxRate:
            continue
        crossed.append((day, currency, (usd.rate(currency, day) / base).quantize(CROSS_QUANTUM)))
    return FxTable.from_rows(crossed, reporting_currency)
