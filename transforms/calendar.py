"""Calendar months (UTC) as a Beam ``WindowFn``: months are not fixed durations (the plain date
helpers live in ``transforms.months`` and are re-exported here)."""

from __future__ import annotations

import datetime as dt

from apache_beam.coders import coders
from apache_beam.transforms import window
from apache_beam.utils.timestamp import Timestamp

from transforms.months import UTC, date_to_micros, month_start, months_between, next_month, parse_month  # noqa: F401


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
