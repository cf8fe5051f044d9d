"""The metrics stage's transforms: pre-aggregation per month and customer-shard facts.

``stage_month`` (pure)
    One ``MonthSlice`` (a calendar month of lake rows as Arrow tables) -> its partial
    aggregates and subscription events split by customer shard, the month's revenue_daily
    rows and the (currency, day) pairs with no FX rate.
``shard_facts`` (pure)
    All months of one customer shard -> ``customer_months`` rows (subscription replay,
    movements) and ``customer_lifetime`` rows.

``pipelines.metrics`` wires the pipeline (files between stages, calendar-month windows over
file references). There is no event-time streaming form: the live mode (``revenue stream``)
commits micro-batches to the lake and recomputes the months from the lake at each publish,
as a batch run does, so a late event restates its month with no special path.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.utils.timestamp import Timestamp

from transforms.calendar import (
    date_to_micros,
    month_of_timestamp,
    month_window,
)
from transforms.fx import FxTable
from transforms.revenue import (
    SUB_COLUMNS,
    add_movements,
    customer_lifetime,
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


__all__ = ["MonthSlice", "StagedMonth", "month_of_timestamp", "month_timestamp", "month_window", "shard_facts",
           "stage_month"]
