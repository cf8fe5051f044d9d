"""Beam transforms of the metrics stage: Arrow pre-aggregation, calendar-month windows, movements.

``PreAggregateMonths``
    Input: bounded or unbounded PCollection of ``MonthSlice`` (one calendar month of
    lake rows as Arrow tables). Output (tagged): ``partials`` -- ``(shard, PARTIAL
    table)`` timestamped inside the month; ``subscriptions`` and ``first_seen`` --
    ``(shard, table)`` for the subscription replay; ``fx_missing`` -- ``(currency, day)``.
    Counter: ``metrics/rows_preaggregated``.
``ReplaySubscriptions``
    ``(shard, ([subscription tables], [first-seen tables]))`` -> ``(shard, PARTIAL)``
    per month (timestamped), MRR at each month's last instant.
``CalendarMonthAggregate``
    Windows ``(key, PARTIAL)`` into ``CalendarMonthWindows`` and merges partials per key
    and month. Trigger: after the watermark, with optional early firings (every N
    elements) and late firings (every late element) within ``allowed_lateness``;
    panes accumulate. Output: ``(key, month, PARTIAL, pane timing)``.
``RouteLateEvents``
    Stateful, keyed by month: once the watermark has passed a month's end plus the
    allowed lateness, later elements for that month go to the ``too_late`` output
    (counted: ``metrics/too_late_events``) instead of being dropped by the window.
``ComputeCustomerMonths``
    All months of a shard -> ``customer_months`` rows with movements and
    ``customer_lifetime`` rows (tagged outputs).
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
from transforms.fx import FxTable, MissingFxRate
from transforms.revenue import (
    SUB_COLUMNS,
    add_movements,
    customer_lifetime,
    empty_partial,
    first_months,
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


def split_by_month(partial: pa.Table):
    months = pc.unique(partial["month"]).to_pylist()
    for month in sorted(months):
        yield month, partial.filter(pc.equal(partial["month"], pa.scalar(month, pa.date32())))


class _PreAggregateFn(beam.DoFn):
    def __init__(self, fx: FxTable, reporting_currency: str, as_of: dt.date, shards: int):
        self.fx, self.reporting, self.as_of, self.shards = fx, reporting_currency, as_of, shards
        self.rows = Metrics.counter("metrics", "rows_preaggregated")

    def process(self, element: MonthSlice):
        self.rows.inc(element.events.num_rows + element.usage.num_rows)
        partial, missing, daily = preaggregate_transactions(element.events, element.usage, self.fx, self.reporting,
                                                            self.as_of)  # fmt: skip
        for pair in missing:
            yield beam.pvalue.TaggedOutput("fx_missing", pair)
        if daily.num_rows:
            yield beam.pvalue.TaggedOutput("revenue_daily", daily)
        for month, part in split_by_month(partial) if partial.num_rows else ():
            for shard, piece in split_by_customer_shard(part, self.shards):
                yield window.TimestampedValue((shard, piece), month_timestamp(month))
        subs = subscription_events(element.events) if element.events.num_rows else None
        if subs is not None and subs.num_rows:
            for shard, piece in split_by_customer_shard(subs, self.shards):
                yield beam.pvalue.TaggedOutput("subscriptions", (shard, piece))
        for shard, piece in split_by_customer_shard(first_months(element.events, element.usage), self.shards):
            yield beam.pvalue.TaggedOutput("first_seen", (shard, piece))


class PreAggregateMonths(beam.PTransform):
    def __init__(self, fx: FxTable, reporting_currency: str, as_of: dt.date, shards: int = 1):
        super().__init__()
        if shards < 1:
            raise ValueError("shards must be >= 1")
        self.args = (fx, reporting_currency.upper(), as_of, shards)

    def expand(self, slices):
        return slices | "PreAggregate" >> beam.ParDo(_PreAggregateFn(*self.args)).with_outputs(
            "subscriptions", "first_seen", "fx_missing", "revenue_daily", main="partials")


class _ReplayFn(beam.DoFn):
    def __init__(self, fx: FxTable, as_of: dt.date, reporting_currency: str):
        self.fx, self.as_of, self.reporting = fx, as_of, reporting_currency

    def process(self, element):
        shard, grouped = element
        subs = [t for t in grouped["subscriptions"]]
        firsts = [t for t in grouped["first_seen"]]
        if not firsts:
            return
        first = pa.concat_tables(firsts)
        g = first.group_by("customer_id", use_threads=False).aggregate([("first_month", "min")])
        first = pa.table({"customer_id": g["customer_id"], "first_month": g["first_month_min"]})
        sub_table = pa.concat_tables(subs) if subs else None
        if sub_table is None:
            from transforms.revenue import SUB_COLUMNS

            sub_table = pa.table({c: pa.array([], pa.string()) for c in SUB_COLUMNS})
        try:
            partial = replay_subscriptions(sub_table, first, self.as_of, self.fx, self.reporting)
        except MissingFxRate as exc:
            yield beam.pvalue.TaggedOutput("fx_missing", (exc.currency, exc.day))
            return
        for month, part in split_by_month(partial):
            yield window.TimestampedValue((shard, part), month_timestamp(month))


class ReplaySubscriptions(beam.PTransform):
    def __init__(self, fx: FxTable, as_of: dt.date, reporting_currency: str):
        super().__init__()
        self.args = (fx, as_of, reporting_currency.upper())

    def expand(self, pcolls):
        return (
            pcolls
            | "GroupByShard" >> beam.CoGroupByKey()
            | "Replay" >> beam.ParDo(_ReplayFn(*self.args)).with_outputs("fx_missing", main="partials")
        )


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


class _CustomerMonthsFn(beam.DoFn):
    def __init__(self, reporting_currency: str, as_of: dt.date):
        self.reporting, self.as_of = reporting_currency, as_of

    def process(self, element):
        shard, items = element
        partial = merge_partials([table for _, table in items])
        if partial.num_rows == 0:
            return
        months = add_movements(pivot_customer_months(partial, self.reporting))
        yield beam.pvalue.TaggedOutput("customer_months", (shard, months))
        yield beam.pvalue.TaggedOutput("customer_lifetime", (shard, customer_lifetime(months, self.as_of)))


class ComputeCustomerMonths(beam.PTransform):
    def __init__(self, reporting_currency: str, as_of: dt.date):
        super().__init__()
        self.args = (reporting_currency.upper(), as_of)

    def expand(self, monthly):
        return (
            monthly
            | "GlobalWindow" >> beam.WindowInto(window.GlobalWindows())
            | "KeyByShard" >> beam.Map(lambda kmt: (kmt[0], (kmt[1], kmt[2])))
            | "GroupShardMonths" >> beam.GroupByKey()
            | "Movements" >> beam.ParDo(_CustomerMonthsFn(*self.args)).with_outputs("customer_months",
                                                                                   "customer_lifetime")
        )


__all__ = ["CalendarMonthAggregate", "ComputeCustomerMonths", "MergePartials", "MonthSlice", "PreAggregateMonths",
           "ReplaySubscriptions", "RouteLateEvents", "StagedMonth", "month_of_timestamp", "month_timestamp",
           "month_window", "shard_facts", "stage_month"]
