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

from transforms.money import UnknownCurrency, currency_exponent

BUNDLED_BASE = "USD"
CROSS_QUANTUM = Decimal("1e-10")


class FxError(ValueError):
    """A rate file is unreadable or malformed, or a rate is missing."""


class MissingFxRate(FxError):
    def __init__(self, currency: str, day: dt.date, reporting_currency: str):
        super().__init__(
            f"no FX rate for {currency} -> {reporting_currency} on or before {day.isoformat()}"
        )
        self.currency = currency
        self.day = day


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
                    day = dt.date.fromisoformat(row["date"].strip())
                    currency = row["currency"].strip().upper()
                    currency_exponent(currency)
                    rate = Decimal(row["rate"].strip())
                except (ValueError, InvalidOperation, UnknownCurrency, AttributeError) as exc:
                    raise FxError(f"{path}:{line_no}: bad FX row {row!r}: {exc}") from None
                if not rate.is_finite() or rate <= 0:
                    raise FxError(f"{path}:{line_no}: FX rate must be a positive number, got {row['rate']!r}")
                rows.append((day, currency, rate))
    except OSError as exc:
        raise FxError(f"cannot read FX rates file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise FxError(f"cannot read FX rates file {path}: not UTF-8 text") from None
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
