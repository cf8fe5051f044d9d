"""The metrics stage's transforms: pre-aggregation per month, customer-shard facts, calendar-month windows.

``stage_month`` (pure)
    One ``MonthSlice`` (a calendar month of lake rows as Arrow tables) -> its partial
    aggregates and subscription events split by customer shard, the month's revenue_daily
    rows and the (currency, day) pairs with no FX rate.
``shard_facts`` (pure)
    All months of one customer shard -> ``customer_months`` rows (subscription replay,
    movements) and ``customer_lifetime`` rows.
``CalendarMonthAggregate``
    Windows ``(key, PARTIAL)`` into ``CalendarMonthWindows`` and merges partials per key
    and month. Trigger: after the watermark, with optional early firings (every N
    elements) and late firings (every late element) within ``allowed_lateness``;
    panes accumulate. Output: ``(key, month, PARTIAL, pane timing)``.
``RouteLateEvents``
    Stateful, keyed by month: once the watermark has passed a month's end plus the
    allowed lateness, later elements for that month go to the ``too_late`` output
    (counted: ``metrics/too_late_events``) instead of being dropped by the window.

``pipelines.metrics`` wires the batch pipeline (files between stages, windows over file
references); the last two are the streaming forms, proven with ``TestStream``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger as tr
from apache_beam.transforms import userstate, window
from apache_beam.utils.timestamp import Duration, Timestamp

from transforms.calendar import (
    CalendarMonthWindows,
    date_to_micros,
    month_of_timestamp,
    month_window,
    next_month,
)
from transforms.fx import FxTable
from transforms.revenue import (
    SUB_COLUMNS,
    add_movements,
    customer_lifetime,
    empty_partial,
    merge_partials,
    next_changes,
    pivot_customer_months,
    preaggregate_transactions,
    replay_subscriptions,
    subscription_events,
)
from transforms.sharding import split_by_shard


@dataclass(frozen=True)
class MonthSlice:
    month: dt.date
    events: pa.Table
    usage: pa.Table
    daily_events: pa.Table | None = None  # set: revenue_daily comes from these (every customer's events of some days)
    index: int = 0  # which slice of the month (a month is read in slices of whole days)


@dataclass
class StagedMonth:
    """What one month slice contributes: partials and subscription events by customer shard, the
    month's revenue_daily rows and the (currency, day) pairs with no FX rate."""

    partials: list
    subscriptions: list
    daily: pa.Table
    missing: list


def stage_month(element: MonthSlice, fx: FxTable, reporting_currency: str, as_of: dt.date,
                shards: int) -> StagedMonth:  # fmt: skip
    partial, missing, daily = preaggregate_transactions(element.events, element.usage, fx, reporting_currency, as_of)
    missing = list(missing)
    if element.daily_events is not None:
        empty_usage = element.usage.schema.empty_table()
        _, more, daily = preaggregate_transactions(element.daily_events, empty_usage, fx, reporting_currency, as_of)
        missing += [pair for pair in more if pair not in missing]
    subs = subscription_events(element.events) if element.events.num_rows else None
    return StagedMonth(
        partials=list(split_by_customer_shard(partial, shards)) if partial.num_rows else [],
        subscriptions=list(split_by_customer_shard(subs, shards)) if subs is not None and subs.num_rows else [],
        daily=daily, missing=missing,
    )


def shard_facts(partials: list[pa.Table], subscriptions: list[pa.Table], fx: FxTable, as_of: dt.date,
                reporting_currency: str) -> tuple[pa.Table, pa.Table] | None:  # fmt: skip
    """All months of one customer shard -> (customer_months rows, customer_lifetime rows).

    Each customer is replayed from its first month (its earliest event) through the as-of month.
    Raises ``MissingFxRate`` when a subscription state cannot be converted.
    """
    partial = merge_partials(partials)
    if partial.num_rows == 0:
        return None
    spans = partial.filter(pc.equal(partial["measure"], "span"))
    g = spans.group_by("customer_id", use_threads=False).aggregate([("month", "min")])
    firsts = pa.table({"customer_id": g["customer_id"], "first_month": g["month_min"]})
    subs = [t for t in subscriptions if t.num_rows]
    if subs:
        sub_table = pa.concat_tables(subs)
    else:
        sub_table = pa.table({c: pa.array([], pa.string()) for c in SUB_COLUMNS})
    replayed = replay_subscriptions(sub_table, firsts, as_of, fx, reporting_currency)
    months = add_movements(pivot_customer_months(merge_partials([partial, replayed]), reporting_currency))
    return months, customer_lifetime(months, as_of, next_changes(replayed))


def split_by_customer_shard(table: pa.Table, shards: int):
    """Rows of ``table`` grouped by the shard of their customer (the same hash as ingest's shards)."""
    return split_by_shard(table, "customer_id", shards)


def month_timestamp(month: dt.date) -> Timestamp:
    """A timestamp inside the month (its first instant) for a month's pre-aggregated element."""
    return Timestamp(micros=date_to_micros(month))


class MergePartials(beam.CombineFn):
    """Combine PARTIAL tables: concatenation plus a grouped sum (associative, commutative)."""

    def create_accumulator(self):
        return []

    def add_input(self, acc, table):
        acc.append(table)
        if len(acc) >= 32:  # bound memory: fold as we go
            acc[:] = [merge_partials(acc)]
        return acc

    def merge_accumulators(self, accs):
        return [merge_partials([t for acc in accs for t in acc])]

    def extract_output(self, acc):
        return merge_partials(acc) if acc else empty_partial()


class _WithPane(beam.DoFn):
    def process(self, element, win=beam.DoFn.WindowParam, pane=beam.DoFn.PaneInfoParam):
        key, table = element
        month = month_of_timestamp(win.start)
        yield key, month, table, pane.timing


class CalendarMonthAggregate(beam.PTransform):
    def __init__(self, allowed_lateness_days: int = 0, early_every: int | None = None):
        super().__init__()
        if allowed_lateness_days < 0:
            raise ValueError("allowed_lateness_days must be >= 0")
        self.lateness = Duration(seconds=allowed_lateness_days * 86400)
        self.early_every = early_every

    def expand(self, partials):
        early = tr.AfterCount(self.early_every) if self.early_every else None
        late = tr.AfterCount(1) if self.lateness.micros > 0 else None
        return (
            partials
            | "CalendarMonths" >> beam.WindowInto(
                CalendarMonthWindows(),
                trigger=tr.AfterWatermark(early=early, late=late),
                accumulation_mode=tr.AccumulationMode.ACCUMULATING,
                allowed_lateness=self.lateness,
            )
            | "MergePerMonth" >> beam.CombinePerKey(MergePartials())
            | "WithMonth" >> beam.ParDo(_WithPane()).with_output_types(object)
        )


class _RouteLateFn(beam.DoFn):
    """Keyed by month: a watermark timer at month end + lateness closes the month."""

    CLOSED = userstate.ReadModifyWriteStateSpec("closed", beam.coders.BooleanCoder())
    EXPIRY = userstate.TimerSpec("expiry", userstate.TimeDomain.WATERMARK)

    def __init__(self, lateness_days: int):
        self.lateness = Duration(seconds=lateness_days * 86400)
        self.too_late = Metrics.counter("metrics", "too_late_events")

    def process(self, element, closed=beam.DoFn.StateParam(CLOSED), expiry=beam.DoFn.TimerParam(EXPIRY),
                timestamp=beam.DoFn.TimestampParam):  # fmt: skip
        month_key, value = element
        if closed.read():
            self.too_late.inc()
            yield beam.pvalue.TaggedOutput("too_late", value)
            return
        month = dt.date.fromisoformat(month_key)
        expiry.set(Timestamp(micros=date_to_micros(next_month(month))) + self.lateness)
        yield window.TimestampedValue(value, timestamp)

    @userstate.on_timer(EXPIRY)
    def on_expiry(self, closed=beam.DoFn.StateParam(CLOSED)):
        closed.write(True)


class RouteLateEvents(beam.PTransform):
    """Timestamped values -> main output (on time or within lateness) and ``too_late``."""

    def __init__(self, allowed_lateness_days: int = 0):
        super().__init__()
        self.lateness_days = allowed_lateness_days

    def expand(self, values):
        return (
            values
            | "KeyByMonth" >> beam.Map(lambda v, ts=beam.DoFn.TimestampParam: (month_of_timestamp(ts).isoformat(), v))
            | "Route" >> beam.ParDo(_RouteLateFn(self.lateness_days)).with_outputs("too_late", main="on_time")
        )


__all__ = ["CalendarMonthAggregate", "MergePartials", "MonthSlice", "RouteLateEvents", "StagedMonth",
           "month_of_timestamp", "month_timestamp", "month_window", "shard_facts", "stage_month"]
