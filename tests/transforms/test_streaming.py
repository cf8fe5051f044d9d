"""Streaming behaviour of the calendar-month aggregation, proven with TestStream.

Runs on BundleBasedDirectRunner (TestStream is not supported on FnApiRunner, STACK.md).
"""

import datetime as dt
from decimal import Decimal

import apache_beam as beam
import pyarrow as pa
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from pipelines import lake
from pipelines.layout import DataLayout
from pipelines.metrics import WriteLateEvents
from transforms.calendar import CalendarMonthWindows, date_to_micros, month_window
from transforms.metrics import CalendarMonthAggregate, RouteLateEvents
from transforms.revenue import _partial

EARLY, ON_TIME, LATE = 0, 1, 2


def ts(day: str) -> Timestamp:
    d = dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC)
    return Timestamp.from_utc_datetime(d)


def paid(customer: str, month: str, amount: str) -> pa.Table:
    return _partial(pa.array([customer]), pa.array([dt.date.fromisoformat(month)], pa.date32()), "paid", None,
                    pa.array([Decimal(amount)], pa.decimal128(38, 9)), pa.array([1]))


def streaming_pipeline():
    options = PipelineOptions(["--runner=BundleBasedDirectRunner"])
    options.view_as(StandardOptions).streaming = True
    return TestPipeline(options=options)


def test_calendar_month_windows_are_calendar_months():
    fn = CalendarMonthWindows()

    class Ctx:
        def __init__(self, t):
            self.timestamp = t

    feb = fn.assign(Ctx(ts("2024-02-29T23:59:59")))[0]
    assert feb == month_window(dt.date(2024, 2, 1))
    assert (feb.end - feb.start).micros == 29 * 86400 * 10**6
    dec = fn.assign(Ctx(ts("2023-12-31T23:59:59.999999")))[0]
    assert dec.end.micros == date_to_micros(dt.date(2024, 1, 1))
    assert fn.assign(Ctx(ts("2024-03-01T00:00:00")))[0].start == feb.end


def test_early_on_time_late_and_too_late_panes(tmp_path):
    stream = (
        TestStream()
        .advance_watermark_to(ts("2024-01-01T00:00:00"))
        .add_elements([TimestampedValue(paid("c1", "2024-01-01", "10.00"), ts("2024-01-10T00:00:00"))])
        .add_elements([TimestampedValue(paid("c1", "2024-01-01", "5.00"), ts("2024-01-20T00:00:00"))])
        .advance_watermark_to(ts("2024-02-01T00:00:01"))  # January closes: on-time pane
        .add_elements([TimestampedValue(paid("c1", "2024-01-01", "2.50"), ts("2024-01-28T00:00:00"))])  # late, allowed
        .advance_watermark_to(ts("2024-02-05T00:00:00"))  # past the 3 days of allowed lateness
        .add_elements([TimestampedValue(paid("c1", "2024-01-01", "99.00"), ts("2024-01-15T00:00:00"))])  # too late
        .add_elements([TimestampedValue(paid("c1", "2024-02-01", "7.00"), ts("2024-02-06T00:00:00"))])
        .advance_watermark_to_infinity()
    )
    with streaming_pipeline() as p:
        routed = p | stream | "Route" >> RouteLateEvents(allowed_lateness_days=3)
        panes = (
            routed.on_time
            | "Key" >> beam.Map(lambda t: ("c1", t))
            | "Aggregate" >> CalendarMonthAggregate(allowed_lateness_days=3, early_every=1)
            | "Summ" >> beam.Map(lambda kmtp: (kmtp[1].isoformat(), kmtp[3],
                                                str(sum(kmtp[2]["amount"].to_pylist(), Decimal(0)).quantize(Decimal("0.01")))))
        )
        too_late = routed.too_late | "TooLate" >> beam.Map(lambda t: str(t["amount"][0].as_py().quantize(Decimal("0.01"))))
        _ = routed.too_late | "Write" >> WriteLateEvents(DataLayout(tmp_path))
        assert_that(panes, equal_to([
            ("2024-01-01", EARLY, "10.00"),
            ("2024-01-01", EARLY, "15.00"),
            ("2024-01-01", ON_TIME, "15.00"),
            ("2024-01-01", LATE, "17.50"),
            ("2024-02-01", EARLY, "7.00"),
            ("2024-02-01", ON_TIME, "7.00"),
        ]), label="Panes")
        assert_that(too_late, equal_to(["99.00"]), label="TooLate")
    # the too-late contribution is written to the lake, not dropped
    late = lake.read_table(DataLayout(tmp_path), "late_events").to_pylist()
    assert [(r["customer_id"], r["month"].isoformat(), str(r["amount"].quantize(Decimal("0.01")))) for r in late] == [
        ("c1", "2024-01-01", "99.00")]
    assert late[0]["event_time"] == dt.datetime(2024, 1, 15, tzinfo=dt.UTC)
