"""Calendar months (UTC) as a Beam ``WindowFn``: months are not fixed durations."""

from __future__ import annotations

import datetime as dt

from apache_beam.coders import coders
from apache_beam.transforms import window
from apache_beam.utils.timestamp import Timestamp

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


def month_of_timestamp(ts: Timestamp) -> dt.date:
    return month_start(ts.to_utc_datetime(has_tz=True))


def month_window(month: dt.date) -> window.IntervalWindow:
    start = Timestamp(micros=date_to_micros(month))
    end = Timestamp(micros=date_to_micros(next_month(month)))
    return window.IntervalWindow(start, end)


class CalendarMonthWindows(window.NonMergingWindowFn):
    """Assigns each element to the UTC calendar month of its event timestamp.

    ``[first instant of the month, first instant of the next month)``: 28 to 31 days,
    so a month's on-time pane fires when the watermark passes its real last instant.
    """

    def assign(self, context: window.WindowFn.AssignContext):
        return [month_window(month_of_timestamp(context.timestamp))]

    def get_window_coder(self):
        return coders.IntervalWindowCoder()

    def __eq__(self, other):
        return type(self) is type(other)

    def __hash__(self):
        return hash(type(self))

    def __repr__(self):
        return "CalendarMonthWindows()"
