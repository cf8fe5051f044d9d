"""Calendar months as event-time windows: 28 to 31 days, UTC."""

import datetime as dt

from apache_beam.utils.timestamp import Timestamp

from transforms.calendar import (
    CalendarMonthWindows,
    date_to_micros,
    month_of_timestamp,
    month_start,
    month_window,
    months_between,
    next_month,
)


def test_month_arithmetic():
    assert month_start(dt.date(2024, 2, 29)) == dt.date(2024, 2, 1)
    assert next_month(dt.date(2024, 12, 1)) == dt.date(2025, 1, 1)
    assert months_between(dt.date(2024, 11, 30), dt.date(2025, 2, 1)) == [
        dt.date(2024, 11, 1), dt.date(2024, 12, 1), dt.date(2025, 1, 1), dt.date(2025, 2, 1)]
    assert months_between(dt.date(2024, 3, 5), dt.date(2024, 3, 9)) == [dt.date(2024, 3, 1)]


def test_windows_are_real_calendar_months():
    feb = month_window(dt.date(2024, 2, 1))
    assert (feb.end.micros - feb.start.micros) // 86_400_000_000 == 29  # leap February
    assert feb.start.micros == date_to_micros(dt.date(2024, 2, 1))
    last_instant = Timestamp(micros=date_to_micros(dt.date(2024, 3, 1)) - 1)
    assert month_of_timestamp(last_instant) == dt.date(2024, 2, 1)


def test_calendar_month_windows_assigns_by_event_time():
    class Ctx:
        timestamp = Timestamp(micros=date_to_micros(dt.date(2025, 1, 31)) + 3_600_000_000)

    (win,) = CalendarMonthWindows().assign(Ctx())
    assert win == month_window(dt.date(2025, 1, 1))
    assert CalendarMonthWindows() == CalendarMonthWindows()
