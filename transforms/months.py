"""Calendar months (UTC) as plain dates: what every stage needs, without importing Beam."""

from __future__ import annotations

import datetime as dt

UTC = dt.UTC


def month_start(day: dt.date | dt.datetime) -> dt.date:
    return dt.date(day.year, day.month, 1)


def parse_month(value: str) -> dt.date:
    """``YYYY-MM`` (a ``--month`` flag) -> the month's first day; anything else is an input error."""
    from transforms.errors import InputError

    try:
        year, month = (int(x) for x in value.split("-"))
        return dt.date(year, month, 1)
    except ValueError:
        raise InputError(f"--month must be YYYY-MM, got {value!r}") from None


def next_month(month: dt.date) -> dt.date:
    return dt.date(month.year + (month.month == 12), month.month % 12 + 1, 1)


def months_between(first: dt.date, last: dt.date) -> list[dt.date]:
    """Every month start from ``first``'s month through ``last``'s month, inclusive."""
    out, m = [], month_start(first)
    end = month_start(last)
    while m <= end:
        out.append(m)
        m = next_month(m)
    return out


def date_to_micros(day: dt.date) -> int:
    return (dt.datetime(day.year, day.month, day.day, tzinfo=UTC) - dt.datetime(1970, 1, 1, tzinfo=UTC)) // dt.timedelta(
        microseconds=1
    )
