"""Revenue state and customer-month facts (CONTRACT section 2), as pure Arrow/Python functions.

The Beam stage (``transforms.metrics``) wires these together. Intermediate results are
*partial* tables in one long schema, ``PARTIAL``: ``(customer_id, month, measure, key,
amount, count)``; merging partials is concatenation plus a grouped sum, so they can be
combined in any order, in any window pane, by any worker.

Measures: ``span`` (the customer exists this month), ``mrr`` (reporting currency,
count = active subscriptions), ``mrr_orig`` (key = currency, amount = minor units),
``paid`` (invoices paid incl. tax, reporting currency; count = invoices), ``tax``,
``refund`` (count = refunds), ``failed`` (count = failed payments), ``usage`` (key =
meter, amount = quantity).

Policies (documented in the README):
- a subscription's MRR at instant ``t`` comes from its latest state with
  ``effective_at <= t`` (ties: ``occurred_at``, then ``event_id``); a cancellation
  state gives 0; so does ``t < trial_end`` (``trial_end`` carries over to updates that
  do not set it);
- month M is measured at its last instant; the as-of month at the end of the as-of day;
- each subscription state's MRR is converted at the FX rate of the day the state began
  and rounded to the reporting currency's minor unit (half away from zero); a
  customer's MRR is the sum of its subscriptions';
- each payment, tax and refund is converted at its own day's rate and rounded likewise.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms import schemas
from transforms.calendar import date_to_micros, month_start, months_between, next_month
from transforms.fx import FxTable, MissingFxRate
from transforms.money import MONEY_QUANTUM, currency_exponent, mrr_minor_exact, round_to_minor

AMOUNT = pa.decimal128(38, 9)
RATE = pa.decimal128(18, 15)  # reporting-currency units per *minor* unit of the source currency
RATE_QUANTUM = Decimal(1).scaleb(-RATE.scale)
MINOR_UNITS = pa.decimal128(19, 0)  # integer minor units (int64 range) as a decimal, for decimal arithmetic
PARTIAL = pa.schema(
    [
        pa.field("customer_id", pa.string()),
        pa.field("month", pa.date32()),
        pa.field("measure", pa.string()),
        pa.field("key", pa.string()),
        pa.field("amount", AMOUNT),
        pa.field("count", pa.int64()),
    ]
)
SUB_COLUMNS = ["customer_id", "subscription_id", "event_type", "event_id", "occurred_at", "effective_at",
               "currency", "unit_amount", "quantity", "interval", "interval_count", "trial_end"]  # fmt: skip
SUB_TYPES = ("subscription.created", "subscription.updated", "subscription.canceled")
# the lake columns the metrics read (the rest -- provenance, customer attributes -- is never loaded)
_EVENT_COLUMNS = set(SUB_COLUMNS) | {"event_id", "event_type", "occurred_at", "customer_id", "currency",
                                     "currency_exponent", "amount", "tax"}  # fmt: skip
METRICS_EVENTS = pa.schema([f for f in schemas.EVENTS if f.name in _EVENT_COLUMNS])
METRICS_USAGE = pa.schema([f for f in schemas.USAGE if f.name in {"event_id", "occurred_at", "customer_id", "meter",
                                                                   "quantity"}])  # fmt: skip
ZERO = Decimal(0)
EPOCH = dt.datetime(1970, 1, 1)  # naive: event instants are UTC epoch microseconds


def empty_partial() -> pa.Table:
    return PARTIAL.empty_table()


def merge_partials(tables: Iterable[pa.Table]) -> pa.Table:
    """Concatenate and sum by (customer_id, month, measure, key). Order-independent."""
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return empty_partial()
    merged = pa.concat_tables(tables)
    if len(tables) == 1 and merged.num_rows < 2:
        return merged
    out = merged.group_by(["customer_id", "month", "measure", "key"], use_threads=False).aggregate(
        [("amount", "sum"), ("count", "sum")]
    )
    return pa.table(
        [out["customer_id"], out["month"], out["measure"], out["key"],
         out["amount_sum"].cast(AMOUNT), out["count_sum"]], schema=PARTIAL,
    )  # fmt: skip


# ------------------------------------------------------------------ FX, vectorised


def fx_rates_for(fx: FxTable, foreign: pa.Table) -> pa.Table:
    """Rates per minor unit for the ``(currency, day)`` pairs of ``foreign``'s rows only (missing ones omitted).

    Only the days that carry a transaction get a rate, so a far-future event never makes a
    rate table for every day in between.
    """
    pairs = foreign.group_by(["currency", "day"], use_threads=False).aggregate([])
    cur_col, day_col, rate_col = [], [], []
    for currency, day in zip(pairs["currency"].to_pylist(), pairs["day"].to_pylist(), strict=True):
        try:
            rate = fx.rate(currency, day)
        except MissingFxRate:
            continue
        cur_col.append(currency)
        day_col.append(day)
        rate_col.append((rate.scaleb(-currency_exponent(currency))).quantize(RATE_QUANTUM))
    return pa.table({"currency": pa.array(cur_col, pa.string()), "day": pa.array(day_col, pa.date32()),
                     "rate": pa.array(rate_col, RATE)})  # fmt: skip


def _convert(table: pa.Table, amount_col: str, rates: pa.Table, reporting_exponent: int) -> tuple[pa.Array, pa.Table]:
    """Per-row conversion of minor units at the row's day rate, rounded to the reporting minor unit."""
    joined = table.join(rates, keys=["currency", "day"], join_type="left outer", use_threads=False)
    missing = joined.filter(pc.is_null(joined["rate"]))
    amount = pc.cast(joined[amount_col], MINOR_UNITS)
    converted = pc.round(pc.multiply(amount, joined["rate"]), ndigits=reporting_exponent, round_mode="half_up")
    return joined, converted.cast(AMOUNT), missing


def preaggregate_transactions(events: pa.Table, usage: pa.Table, fx: FxTable, reporting_currency: str,
                              as_of: dt.date) -> tuple[pa.Table, list[tuple[str, dt.date]], pa.Table]:  # fmt: skip
    """Invoices paid, tax, refunds, failed payments and usage per customer-month, as a partial table.

    Returns the partial, the (currency, day) pairs that had no FX rate (an error for the caller),
    and the day x currency revenue facts (``schemas.REVENUE_DAILY``) of the same converted rows:
    each payment is converted once, here, and both outputs sum the same converted amounts.
    """
    end = _end_of_day_micros(as_of)
    parts, missing = [], set()
    daily = schemas.REVENUE_DAILY.empty_table()
    if events.num_rows:
        ev = events.filter(pc.less(events["occurred_at"].cast(pa.int64()), end))
        ev = ev.append_column("day", pc.cast(ev["occurred_at"], pa.date32()))
        ev = ev.append_column("month", _month_of(ev["day"]))
        seen = ev.group_by(["customer_id", "month"], use_threads=False).aggregate([("event_id", "count")])
        parts.append(_partial(seen["customer_id"], seen["month"], "span", None, None, seen["event_id_count"]))
        money = ev.filter(pc.is_in(ev["event_type"], pa.array(["invoice.paid", "charge.refunded"])))
        if money.num_rows:
            conv, miss = convert_payments(money, fx, reporting_currency)
            missing.update(miss)
            paid = conv.filter(pc.equal(conv["event_type"], "invoice.paid"))
            if paid.num_rows:
                g = paid.group_by(["customer_id", "month"], use_threads=False).aggregate(
                    [("amt", "sum"), ("taxc", "sum"), ("amt", "count")])
                parts.append(_partial(g["customer_id"], g["month"], "paid", None, g["amt_sum"], g["amt_count"]))
                parts.append(_partial(g["customer_id"], g["month"], "tax", None, g["taxc_sum"], None))
            refunds = conv.filter(pc.equal(conv["event_type"], "charge.refunded"))
            if refunds.num_rows:
                g = refunds.group_by(["customer_id", "month"], use_threads=False).aggregate(
                    [("amt", "sum"), ("amt", "count")])
                parts.append(_partial(g["customer_id"], g["month"], "refund", None, g["amt_sum"], g["amt_count"]))
            daily = revenue_by_day(conv, reporting_currency)
        failed = ev.filter(pc.equal(ev["event_type"], "invoice.payment_failed"))
        if failed.num_rows:
            g = failed.group_by(["customer_id", "month"], use_threads=False).aggregate([("event_id", "count")])
            parts.append(_partial(g["customer_id"], g["month"], "failed", None, None, g["event_id_count"]))
    if usage.num_rows:
        us = usage.filter(pc.less(usage["occurred_at"].cast(pa.int64()), end))
        us = us.append_column("month", _month_of(pc.cast(us["occurred_at"], pa.date32())))
        g = us.group_by(["customer_id", "month", "meter"], use_threads=False).aggregate(
            [("quantity", "sum"), ("event_id", "count")])
        parts.append(_partial(g["customer_id"], g["month"], "usage", g["meter"], g["quantity_sum"], g["event_id_count"]))
        parts.append(_partial(g["customer_id"], g["month"], "span", None, None, g["event_id_count"]))
    return merge_partials(parts), sorted(missing), daily


def convert_payments(money: pa.Table, fx: FxTable, reporting_currency: str) -> tuple[pa.Table, set]:
    """Each payment's amount and tax in the reporting currency at its own day's rate, rounded to the
    reporting minor unit (half away from zero): the project's one definition of that conversion.

    Adds ``amt`` and ``taxc`` (AMOUNT) to ``customer_id, month, day, currency, currency_exponent,
    event_type, amount, tax0``; returns it with the (currency, day) pairs that had no rate.
    """
    rep_exp = currency_exponent(reporting_currency)
    money = money.append_column("tax0", pc.fill_null(money["tax"], 0))
    keep = ["customer_id", "month", "day", "currency", "currency_exponent", "event_type", "amount", "tax0"]
    local = money.filter(pc.equal(money["currency"], reporting_currency))
    foreign = money.filter(pc.not_equal(money["currency"], reporting_currency))
    pieces, missing = [], set()
    if local.num_rows:
        scale = pa.scalar(Decimal(1).scaleb(-rep_exp), RATE)
        amt = pc.multiply(pc.cast(local["amount"], MINOR_UNITS), scale).cast(AMOUNT)
        tax = pc.multiply(pc.cast(local["tax0"], MINOR_UNITS), scale).cast(AMOUNT)
        pieces.append(local.select(keep).append_column("amt", amt).append_column("taxc", tax))
    if foreign.num_rows:
        rates = fx_rates_for(fx, foreign)
        joined, amt, miss = _convert(foreign, "amount", rates, rep_exp)
        missing.update((r["currency"], r["day"]) for r in miss.select(["currency", "day"]).to_pylist())
        _, tax, _ = _convert(foreign, "tax0", rates, rep_exp)
        pieces.append(joined.select(keep).append_column("amt", amt).append_column("taxc", tax))
    return pa.concat_tables(pieces, promote_options="permissive"), missing


def revenue_by_day(conv: pa.Table, reporting_currency: str) -> pa.Table:
    """Day x currency sums of converted payments (``convert_payments``' output): ``schemas.REVENUE_DAILY``."""
    wide = pa.decimal128(38, 0)
    conv = conv.filter(pc.is_valid(conv["amt"]))  # no rate: reported by the caller as an error, not a zero
    conv = conv.append_column("paid", pc.equal(conv["event_type"], "invoice.paid"))
    zero_int, zero_amt = pa.scalar(0, wide), pa.scalar(ZERO, AMOUNT)
    cols = {
        "gross_minor": pc.if_else(conv["paid"], pc.cast(conv["amount"], wide), zero_int),
        "tax_minor": pc.if_else(conv["paid"], pc.cast(conv["tax0"], wide), zero_int),
        "refunds_minor": pc.if_else(conv["paid"], zero_int, pc.cast(conv["amount"], wide)),
        "gross_rep": pc.if_else(conv["paid"], conv["amt"], zero_amt),
        "tax_rep": pc.if_else(conv["paid"], conv["taxc"], zero_amt),
        "refunds_rep": pc.if_else(conv["paid"], zero_amt, conv["amt"]),
        "is_paid": pc.cast(conv["paid"], pa.int64()),
        "is_refund": pc.cast(pc.invert(conv["paid"]), pa.int64()),
    }
    base = conv.select(["day", "month", "currency", "currency_exponent"])
    for name, col in cols.items():
        base = base.append_column(name, col)
    g = base.group_by(["day", "month", "currency", "currency_exponent"], use_threads=False).aggregate(
        [(name, "sum") for name in cols])
    exponents = g["currency_exponent"].to_pylist()

    def major(column: str) -> pa.Array:
        return pa.array([Decimal(v).scaleb(-e).quantize(MONEY_QUANTUM) for v, e in
                         zip(g[f"{column}_sum"].to_pylist(), exponents, strict=True)], schemas.MONEY)  # fmt: skip

    out = pa.table({
        "date": g["day"], "currency": g["currency"], "gross_revenue": major("gross_minor"), "tax": major("tax_minor"),
        "refunds": major("refunds_minor"),
        "gross_revenue_reporting": g["gross_rep_sum"].cast(schemas.MONEY),
        "tax_reporting": g["tax_rep_sum"].cast(schemas.MONEY),
        "refunds_reporting": g["refunds_rep_sum"].cast(schemas.MONEY),
        "invoices_paid": g["is_paid_sum"], "refund_count": g["is_refund_sum"],
        "reporting_currency": pa.array([reporting_currency] * g.num_rows, pa.string()), "month": g["month"],
    })  # fmt: skip
    return out.cast(schemas.REVENUE_DAILY).sort_by([("date", "ascending"), ("currency", "ascending")])


def _month_of(days: pa.ChunkedArray | pa.Array) -> pa.Array:
    year = pc.year(days)
    month = pc.month(days)
    strings = pc.binary_join_element_wise(pc.cast(year, pa.string()),
                                          pc.utf8_lpad(pc.cast(month, pa.string()), 2, "0"), "01", "-")  # fmt: skip
    return pc.strptime(strings, format="%Y-%m-%d", unit="s").cast(pa.date32())


def money_sub(a, b):
    """a - b on MONEY columns (Arrow widens decimal precision past 38 otherwise)."""
    narrow = pa.decimal128(36, 6)
    return pc.subtract(pc.cast(a, narrow), pc.cast(b, narrow)).cast(schemas.MONEY)


def _partial(customers, months, measure, keys, amounts, counts) -> pa.Table:
    n = len(customers)
    return pa.table(
        {
            "customer_id": customers,
            "month": months,
            "measure": pa.array([measure] * n, pa.string()),
            "key": keys if keys is not None else pa.array([""] * n, pa.string()),
            "amount": amounts.cast(AMOUNT) if amounts is not None else pa.array([ZERO] * n, AMOUNT),
            "count": counts if counts is not None else pa.array([0] * n, pa.int64()),
        },
        schema=PARTIAL,
    )


# ------------------------------------------------------------------ subscription replay


def subscription_events(events: pa.Table) -> pa.Table:
    subs = events.filter(pc.is_in(events["event_type"], pa.array(SUB_TYPES)))
    return subs.select(SUB_COLUMNS)


def first_months(events: pa.Table, usage: pa.Table) -> pa.Table:
    """(customer_id, first_month): the month of each customer's first event."""
    parts = []
    for t in (events, usage):
        if t.num_rows:
            g = t.group_by("customer_id", use_threads=False).aggregate([("occurred_at", "min")])
            parts.append(pa.table({"customer_id": g["customer_id"],
                                   "first_month": _month_of(pc.cast(g["occurred_at_min"], pa.date32()))}))  # fmt: skip
    if not parts:
        return pa.table({"customer_id": pa.array([], pa.string()), "first_month": pa.array([], pa.date32())})
    all_ = pa.concat_tables(parts)
    g = all_.group_by("customer_id", use_threads=False).aggregate([("first_month", "min")])
    return pa.table({"customer_id": g["customer_id"], "first_month": g["first_month_min"]})


class _State:
    __slots__ = ("eff", "mrr", "orig_minor", "currency", "trial_end", "canceled")

    def __init__(self, eff, mrr, orig_minor, currency, trial_end, canceled):
        self.eff, self.mrr, self.orig_minor = eff, mrr, orig_minor
        self.currency, self.trial_end, self.canceled = currency, trial_end, canceled


def replay_subscriptions(subs: pa.Table, firsts: pa.Table, as_of: dt.date, fx: FxTable,
                         reporting_currency: str) -> pa.Table:  # fmt: skip
    """MRR at each month's last instant for every customer-month, from first event month to the as-of month.

    Raises ``MissingFxRate`` naming the currency and day when a state cannot be converted.
    """
    as_of_end = _end_of_day_micros(as_of)
    timelines = _subscription_timelines(subs, as_of_end, fx, reporting_currency)
    month_ends = _MonthEnds(month_start(as_of), as_of_end)
    rows: list[tuple] = []
    customers = zip(firsts["customer_id"].to_pylist(), firsts["first_month"].to_pylist(), strict=True)
    for customer, first in sorted(customers):
        _replay_customer(rows, customer, timelines.get(customer, []), month_ends.since(first), as_of_end)
    return _partial_from_rows(rows)


def _end_of_day_micros(day: dt.date) -> int:
    """The instant ``day`` ends (the next day's midnight UTC) in epoch microseconds."""
    return date_to_micros(day + dt.timedelta(days=1))


def _subscription_timelines(subs: pa.Table, as_of_end: int, fx: FxTable,
                            reporting_currency: str) -> dict[str, list[list[_State]]]:  # fmt: skip
    """Each customer's subscriptions as state timelines in effective order (events after the as-of day dropped).

    Order within a subscription: ``effective_at``, then ``occurred_at``, then ``event_id``. A
    cancellation is a state too; ``trial_end`` carries over to later states that do not set it.
    """
    subs = subs.filter(pc.less(subs["occurred_at"].cast(pa.int64()), as_of_end)) if subs.num_rows else subs
    subs = subs.sort_by([("customer_id", "ascending"), ("subscription_id", "ascending"), ("effective_at", "ascending"),
                         ("occurred_at", "ascending"), ("event_id", "ascending")])  # fmt: skip
    cols = {c: subs[c].to_pylist() for c in SUB_COLUMNS}
    for c in ("occurred_at", "effective_at", "trial_end"):
        cols[c] = subs[c].cast(pa.int64()).to_pylist()
    by_customer: dict[str, list[list[_State]]] = {}
    valuations: dict[tuple, tuple[Decimal, int]] = {}  # many states share plan, price and day
    current_sub = None
    for i in range(subs.num_rows):
        key = (cols["customer_id"][i], cols["subscription_id"][i])
        if key != current_sub:
            timeline: list[_State] = []
            by_customer.setdefault(key[0], []).append(timeline)
            current_sub = key
            trial_end = None
        eff = cols["effective_at"][i]
        if cols["event_type"][i] == "subscription.canceled":
            timeline.append(_State(eff, ZERO, 0, None, trial_end, True))
            continue
        if cols["trial_end"][i] is not None:
            trial_end = cols["trial_end"][i]
        currency = cols["currency"][i]
        day = (EPOCH + dt.timedelta(microseconds=eff)).date()
        # the valuation depends on the day only through its rate: cache by rate, not by day
        rate_key = None if currency == reporting_currency else _rate_or_day(fx, currency, day)
        params = (currency, cols["unit_amount"][i], cols["quantity"][i], cols["interval"][i],
                  cols["interval_count"][i], rate_key)  # fmt: skip
        if params not in valuations:
            valuations[params] = _state_mrr(*params[:5], day, fx, reporting_currency)
        mrr, orig = valuations[params]
        timeline.append(_State(eff, mrr, orig, currency, trial_end, False))
    return by_customer


def _rate_or_day(fx: FxTable, currency: str, day: dt.date):
    """The rate a state on ``day`` converts at, or the day itself when there is none (``_state_mrr``
    then raises ``MissingFxRate`` naming it)."""
    try:
        return fx.rate(currency, day)
    except MissingFxRate:
        return day


def _state_mrr(currency: str, unit_amount: int, quantity: int, interval: str, interval_count: int, day: dt.date,
               fx: FxTable, reporting_currency: str) -> tuple[Decimal, int]:  # fmt: skip
    """A state's MRR in the reporting currency at ``day``'s rate, and in its own minor units (rounded half up)."""
    exact = mrr_minor_exact(unit_amount, quantity, interval, interval_count)
    rate = fx.rate(currency, day)
    major = exact / 10 ** currency_exponent(currency)
    return round_to_minor(major * Fraction(rate), reporting_currency), int(exact + Fraction(1, 2))


class _MonthEnds:
    """(month, the instant it is measured at) from a first month through the as-of month.

    A month is measured at its end, the as-of month at the end of the as-of day. Cached per first month.
    """

    def __init__(self, as_of_month: dt.date, as_of_end: int):
        self._as_of_month = as_of_month
        self._as_of_end = as_of_end
        self._boundaries: dict[dt.date, int] = {}
        self._spans: dict[dt.date, list[tuple[dt.date, int]]] = {}

    def since(self, first: dt.date) -> list[tuple[dt.date, int]]:
        if first not in self._spans:
            self._spans[first] = []
            for month in months_between(first, self._as_of_month):
                if month not in self._boundaries:
                    self._boundaries[month] = min(date_to_micros(next_month(month)), self._as_of_end)
                self._spans[first].append((month, self._boundaries[month]))
        return self._spans[first]


def _replay_customer(rows: list[tuple], customer: str, timelines: list[list[_State]],
                     month_ends: list[tuple[dt.date, int]], as_of_end: int) -> None:  # fmt: skip
    """Append the customer's ``span``, ``mrr`` and ``mrr_orig`` partial rows for each month, in month order,
    and a ``next_change`` row (count = the instant, epoch microseconds) when a known state takes
    effect, or a trial ends, at or after the end of the as-of day: the first instant at which the
    customer's MRR can change with no new event (what an incremental run must recompute)."""
    pointers = [-1] * len(timelines)
    month = None
    for month, boundary in month_ends:
        total, active, orig = _mrr_at(timelines, pointers, boundary)
        rows.append((customer, month, "span", "", ZERO, 0))
        if active:
            rows.append((customer, month, "mrr", "", total, active))
            for currency, minor in orig.items():
                rows.append((customer, month, "mrr_orig", currency, Decimal(minor), 0))
    upcoming = []
    for t_i, timeline in enumerate(timelines):
        p = pointers[t_i]
        if p + 1 < len(timeline):
            upcoming.append(timeline[p + 1].eff)  # >= the last boundary (as_of_end): pointers stop before it
        if p >= 0 and not timeline[p].canceled and timeline[p].trial_end is not None \
                and timeline[p].trial_end >= as_of_end:  # fmt: skip
            upcoming.append(timeline[p].trial_end)
    if upcoming and month is not None:
        rows.append((customer, month, "next_change", "", ZERO, min(upcoming)))


def _mrr_at(timelines: list[list[_State]], pointers: list[int], boundary: int) -> tuple[Decimal, int, dict[str, int]]:
    """MRR total, active subscriptions and MRR by original currency (minor units) just before ``boundary``.

    ``pointers`` holds each timeline's latest state before the previous boundary; boundaries only
    increase, so each pointer moves forward (updated in place).
    """
    total, active = ZERO, 0
    orig: dict[str, int] = {}
    for t_i, timeline in enumerate(timelines):
        p = pointers[t_i]
        while p + 1 < len(timeline) and timeline[p + 1].eff < boundary:
            p += 1
        pointers[t_i] = p
        if p < 0:
            continue
        state = timeline[p]
        if state.canceled or (state.trial_end is not None and state.trial_end >= boundary):
            continue
        total += state.mrr
        active += 1
        orig[state.currency] = orig.get(state.currency, 0) + state.orig_minor
    return total, active, orig


def _partial_from_rows(rows: list[tuple]) -> pa.Table:
    """``PARTIAL`` rows (customer_id, month, measure, key, amount, count) as a table."""
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(PARTIAL)
    return pa.table([pa.array(column, field.type) for column, field in zip(columns, PARTIAL, strict=True)],
                    schema=PARTIAL)  # fmt: skip


# ------------------------------------------------------------------ customer_months


def pivot_customer_months(partial: pa.Table, reporting_currency: str) -> pa.Table:
    """Long partials -> one row per (customer, month) with every measure; months without a span row dropped."""
    base = partial.filter(pc.equal(partial["measure"], "span")).select(["customer_id", "month"])
    base = base.group_by(["customer_id", "month"], use_threads=False).aggregate([])
    out = base

    def attach(measure: str, amount_name: str | None, count_name: str | None):
        nonlocal out
        part = partial.filter(pc.equal(partial["measure"], measure))
        part = part.group_by(["customer_id", "month"], use_threads=False).aggregate([("amount", "sum"), ("count", "sum")])
        cols = [part["customer_id"], part["month"]]
        names = ["customer_id", "month"]
        if amount_name:
            cols.append(part["amount_sum"].cast(schemas.MONEY))
            names.append(amount_name)
        if count_name:
            cols.append(part["count_sum"])
            names.append(count_name)
        out = out.join(pa.table(cols, names=names), ["customer_id", "month"], join_type="left outer", use_threads=False)

    attach("mrr", "mrr", "active_subscriptions")
    attach("paid", "revenue_paid", "invoices_paid")
    attach("tax", "tax", None)
    attach("refund", "refunds", "refund_count")
    attach("failed", None, "failed_payments")
    zero = pa.scalar(ZERO, schemas.MONEY)
    for name in ("mrr", "revenue_paid", "tax", "refunds"):
        out = out.set_column(out.schema.get_field_index(name), name, pc.fill_null(out[name], zero))
    for name in ("active_subscriptions", "invoices_paid", "refund_count", "failed_payments"):
        out = out.set_column(out.schema.get_field_index(name), name, pc.fill_null(out[name], 0))
    out = out.append_column("net_revenue", money_sub(money_sub(out["revenue_paid"], out["tax"]), out["refunds"]))
    out = _attach_list(out, _nested(partial, "mrr_orig", "currency", "mrr_minor", pa.int64(), "mrr_by_currency"))
    out = _attach_list(out, _nested(partial, "usage", "meter", "quantity", schemas.QUANTITY, "usage"))
    out = out.append_column("reporting_currency", pa.array([reporting_currency] * out.num_rows, pa.string()))
    return out.sort_by([("customer_id", "ascending"), ("month", "ascending")])


def _attach_list(out: pa.Table, nested: pa.Table) -> pa.Table:
    """Left-join a list column by (customer_id, month) via row positions (Arrow joins skip list columns)."""
    column = nested.column_names[-1]
    out = out.append_column("_row", pa.array(np.arange(out.num_rows, dtype=np.int64)))
    keys = nested.select(["customer_id", "month"]).append_column(
        "_nested_row", pa.array(np.arange(nested.num_rows, dtype=np.int64)))
    matched = out.select(["customer_id", "month", "_row"]).join(keys, ["customer_id", "month"], use_threads=False)
    positions = pa.array([None] * out.num_rows, pa.int64()).to_pylist()
    for row, nested_row in zip(matched["_row"].to_pylist(), matched["_nested_row"].to_pylist(), strict=True):
        positions[row] = nested_row
    values = nested[column].combine_chunks().take(pa.array(positions, pa.int64()))
    return out.drop_columns(["_row"]).append_column(column, values)


def _nested(partial, measure, key_name, value_name, value_type, column) -> pa.Table:
    part = partial.filter(pc.equal(partial["measure"], measure)).sort_by(
        [("customer_id", "ascending"), ("month", "ascending"), ("key", "ascending")])
    part = part.group_by(["customer_id", "month", "key"], use_threads=False).aggregate([("amount", "sum")])
    part = part.sort_by([("customer_id", "ascending"), ("month", "ascending"), ("key", "ascending")])
    g = part.group_by(["customer_id", "month"], use_threads=False).aggregate([("key", "list"), ("amount_sum", "list")])
    keys = g["key_list"].combine_chunks()
    values = g["amount_sum_list"].combine_chunks()
    struct = pa.StructArray.from_arrays([keys.flatten(), values.flatten().cast(value_type)], names=[key_name, value_name])
    nested = pa.ListArray.from_arrays(keys.offsets, struct)
    return pa.table({"customer_id": g["customer_id"], "month": g["month"], column: nested})


def add_movements(wide: pa.Table) -> pa.Table:
    """previous_mrr, mrr_change, movement and has_paid_before per customer, months in order (CONTRACT section 2)."""
    wide = wide.sort_by([("customer_id", "ascending"), ("month", "ascending")])
    n = wide.num_rows
    customers = wide["customer_id"].combine_chunks()
    new_customer = np.ones(n, dtype=bool)
    if n > 1:
        new_customer[1:] = ~pc.equal(customers[1:], customers[:-1]).to_numpy(zero_copy_only=False)
    # previous month's MRR within each customer, compared as exact decimals (any magnitude)
    mrr = wide["mrr"].combine_chunks().cast(schemas.MONEY)
    zero = pa.scalar(ZERO, schemas.MONEY)
    shifted = pa.concat_arrays([pa.array([ZERO], schemas.MONEY), mrr.slice(0, n - 1)]) if n else mrr
    previous = pc.if_else(pa.array(new_customer), zero, shifted)

    def flags(values) -> np.ndarray:
        return values.to_numpy(zero_copy_only=False).astype(bool)

    paid, prev_paid = flags(pc.greater(mrr, zero)), flags(pc.greater(previous, zero))
    grew, shrank = flags(pc.greater(mrr, previous)), flags(pc.less(mrr, previous))
    # has_paid_before: any earlier month of the same customer with mrr > 0
    group = np.cumsum(new_customer) - 1
    cum = np.cumsum(paid.astype(np.int64))
    start_cum = (cum - paid)[np.flatnonzero(new_customer)]
    paid_before = (cum - paid.astype(np.int64) - start_cum[group]) > 0
    movement = np.full(n, "unchanged", dtype=object)
    movement[paid & ~prev_paid & ~paid_before] = "new"
    movement[paid & ~prev_paid & paid_before] = "reactivation"
    movement[prev_paid & grew] = "expansion"
    movement[paid & shrank] = "contraction"
    movement[prev_paid & ~paid] = "churn"
    wide = wide.append_column("previous_mrr", previous)
    wide = wide.append_column("mrr_change", money_sub(wide["mrr"], previous))
    wide = wide.append_column("movement", pa.array(movement.tolist(), pa.string()))
    wide = wide.append_column("has_paid_before", pa.array(paid_before))
    empty_money = pa.array([[]] * n, schemas.MRR_BY_CURRENCY)
    empty_usage = pa.array([[]] * n, schemas.USAGE_BY_METER)
    wide = wide.set_column(wide.schema.get_field_index("mrr_by_currency"), "mrr_by_currency",
                           pc.if_else(pc.is_null(wide["mrr_by_currency"]), empty_money, wide["mrr_by_currency"]))  # fmt: skip
    wide = wide.set_column(wide.schema.get_field_index("usage"), "usage",
                           pc.if_else(pc.is_null(wide["usage"]), empty_usage, wide["usage"]))  # fmt: skip
    return wide.select(schemas.CUSTOMER_MONTHS.names + ["month"]).cast(
        schemas.CUSTOMER_MONTHS.append(pa.field("month", pa.date32())))


def next_changes(partial: pa.Table) -> pa.Table:
    """``(customer_id, next_change_at)`` from a partial's ``next_change`` rows (see ``_replay_customer``)."""
    part = partial.filter(pc.equal(partial["measure"], "next_change"))
    g = part.group_by("customer_id", use_threads=False).aggregate([("count", "min")])
    return pa.table({"customer_id": g["customer_id"], "next_change_at": g["count_min"].cast(pa.int64()).cast(schemas.TS)})


def customer_lifetime(months: pa.Table, as_of: dt.date, next_change: pa.Table | None = None) -> pa.Table:
    """One row per customer: the accumulation over its customer_months rows up to the as-of month.

    ``next_change``: ``(customer_id, next_change_at)`` from ``next_changes`` (absent: null)."""
    keys = ["customer_id"]
    base = months.group_by(keys, use_threads=False).aggregate(
        [("month", "min"), ("month", "max"), ("net_revenue", "sum"), ("reporting_currency", "min")])
    zero = pa.scalar(ZERO, schemas.MONEY)
    paid = months.filter(pc.greater(months["mrr"], zero))
    paid = paid.group_by(keys, use_threads=False).aggregate([("month", "min"), ("month", "max"), ("month", "count")])
    churn = months.filter(pc.equal(months["movement"], "churn"))
    churn = churn.group_by(keys, use_threads=False).aggregate([("month", "max"), ("month", "count")])
    paid = paid.rename_columns({"month_min": "first_paid_month", "month_max": "last_paid_month",
                                "month_count": "months_active"})
    churn = churn.rename_columns({"month_max": "last_churn_month", "month_count": "churn_count"})
    out = base.join(paid, keys, use_threads=False)
    out = out.join(churn, keys, use_threads=False)
    last = months.select(["customer_id", "month", "mrr"]).rename_columns(["customer_id", "month_max", "current_mrr"])
    out = out.join(last, ["customer_id", "month_max"], use_threads=False)
    if next_change is None:
        next_change = pa.table({"customer_id": pa.array([], pa.string()), "next_change_at": pa.array([], schemas.TS)})
    out = out.join(next_change, keys, use_threads=False)
    n = out.num_rows
    table = pa.table({
        "customer_id": out["customer_id"],
        "reporting_currency": out["reporting_currency_min"],
        "first_event_month": out["month_min"],
        "first_paid_month": out["first_paid_month"],
        "last_paid_month": out["last_paid_month"],
        "last_churn_month": out["last_churn_month"],
        "months_active": pc.fill_null(out["months_active"], 0),
        "churn_count": pc.fill_null(out["churn_count"], 0),
        "current_mrr": out["current_mrr"],
        "lifetime_revenue": out["net_revenue_sum"].cast(schemas.MONEY),
        "next_change_at": out["next_change_at"],
        "as_of": pa.array([as_of] * n, pa.date32()),
    })
    return table.cast(schemas.CUSTOMER_LIFETIME).sort_by([("customer_id", "ascending")])
