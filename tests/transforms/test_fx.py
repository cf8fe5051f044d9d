"""FX tables: step functions per currency, the bundled table crossed to any reporting currency, strict CSVs."""

import datetime as dt
from decimal import Decimal

import pytest

from transforms.errors import ConfigError
from transforms.fx import FxError, FxTable, MissingFxRate, load_fx, read_rates_csv


def table():
    return FxTable.from_rows([(dt.date(2024, 1, 1), "EUR", Decimal("1.1")),
                              (dt.date(2024, 2, 1), "EUR", Decimal("1.2"))], "USD")  # fmt: skip


def test_rate_is_a_step_function_from_its_date():
    fx = table()
    assert fx.rate("EUR", dt.date(2024, 1, 1)) == Decimal("1.1")
    assert fx.rate("eur", dt.date(2024, 1, 31)) == Decimal("1.1")
    assert fx.rate("EUR", dt.date(2030, 1, 1)) == Decimal("1.2")
    assert fx.rate("USD", dt.date(1999, 1, 1)) == 1  # the reporting currency needs no rate


def test_missing_rate_names_currency_and_day():
    with pytest.raises(MissingFxRate, match="EUR -> USD on or before 2023-12-31") as info:
        table().rate("EUR", dt.date(2023, 12, 31))
    assert isinstance(info.value, ConfigError)
    with pytest.raises(MissingFxRate, match="GBP"):
        table().rate("GBP", dt.date(2024, 5, 1))


def test_bundled_table_crosses_to_another_reporting_currency():
    usd, jpy = load_fx("USD"), load_fx("jpy")
    day = dt.date(2025, 6, 30)
    assert jpy.reporting_currency == "JPY"
    expected = (usd.rate("EUR", day) / usd.rate("JPY", day)).quantize(Decimal("1e-10"))
    assert jpy.rate("EUR", day) == expected
    assert jpy.rate("USD", day) == (1 / usd.rate("JPY", day)).quantize(Decimal("1e-10"))


def write(tmp_path, text):
    path = tmp_path / "fx.csv"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("body", "message"), [
    ("day;ccy;value\n", "needs the columns date,currency,rate"),
    ("date,currency,rate\n", "has no rows"),
    ("date,currency,rate\n2024-01-01,EUR,abc\n", "fx.csv:2: bad FX row: rate 'abc' is not a number"),
    ("date,currency,rate\n2024-01-01,EUR,1e400\n", "fx.csv:2: bad FX row: rate '1e400' is implausibly large"),
    ("date,currency,rate\n2024-01-01,EUR,0\n", "must be a positive number"),
    ("date,currency,rate\n2024-01-01,EUR,-1.2\n", "must be a positive number"),
    ("date,currency,rate\n2024-01-01,EUR,NaN\n", "must be a positive number"),
    ("date,currency,rate\n2024-01-01,EUR,1.00000000001\n", "more than 10 decimal places"),
    ("date,currency,rate\n2024-13-01,EUR,1.1\n", "date '2024-13-01' is not YYYY-MM-DD"),
    ("date,currency,rate\n9999-12-31,EUR,1.1\n", "outside 1970-01-01..2199-12-31"),
    ("date,currency,rate\n2024-01-01,XAU,1.1\n", "XAU"),
    ("date,currency,rate\n2024-01-01,EUR,1.1\n2024-01-02,EUR\n", "fx.csv:3"),
])  # fmt: skip
def test_bad_fx_files_name_the_line_and_the_problem(tmp_path, body, message):
    with pytest.raises(FxError) as info:
        read_rates_csv(write(tmp_path, body))
    assert message in str(info.value)
    assert "class" not in str(info.value)


def test_missing_file_is_an_fx_error(tmp_path):
    with pytest.raises(FxError, match="cannot read FX rates file"):
        read_rates_csv(tmp_path / "nope.csv")
