"""MRR rules of CONTRACT section 2 on hand-checkable subscriptions."""

import datetime as dt
import json
from decimal import Decimal

import pytest

from transforms.fx import FxTable, MissingFxRate
from transforms.ingest import LineChunk, parse_chunk
from transforms.revenue import (
    add_movements,
    first_months,
    pivot_customer_months,
    replay_subscriptions,
    subscription_events,
)

FX = FxTable.from_rows([(dt.date(2020, 1, 1), "EUR", Decimal("1.1")), (dt.date(2024, 3, 10), "EUR", Decimal("1.2")),
                        (dt.date(2020, 1, 1), "JPY", Decimal("0.0067")), (dt.date(2020, 1, 1), "KWD", Decimal("3.25"))],
                       "USD")


def sub(event_id, when, type_="subscription.created", customer="c1", sub_id="s1", **fields):
    base = {"event_id": event_id, "event_type": type_, "occurred_at": when, "customer_id": customer,
            "subscription_id": sub_id}
    if type_ != "subscription.canceled":
        base.update({"plan_id": "p", "currency": "USD", "unit_amount": 1000})
    base.update(fields)
    return base


def mrr_by_month(events, as_of="2024-06-30", fx=FX):
    lines = tuple(json.dumps(e).encode() for e in events)
    tables, parsed = parse_chunk(LineChunk("t.jsonl", 0, 1, lines), None)
    assert parsed.dead["reason"] == [], parsed.dead["message"]
    ev = tables["events"]
    partial = replay_subscriptions(subscription_events(ev), first_months(ev, tables["usage"]),
                                   dt.date.fromisoformat(as_of), fx, "USD")
    wide = add_movements(pivot_customer_months(partial, "USD"))
    return {(r["customer_id"], r["month"].strftime("%Y-%m")): (r["mrr"], r["movement"]) for r in wide.to_pylist()}


def months(result, customer="c1"):
    return {m: v[0] for (c, m), v in result.items() if c == customer}


@pytest.mark.parametrize(("interval", "count", "expected"), [
    ("month", 1, "10.00"), ("month", 3, "3.33"), ("year", 1, "0.83"), ("year", 2, "0.42"),
    ("week", 1, "43.33"), ("week", 2, "21.67"), ("day", 1, "304.17"), ("day", 7, "43.45"),
])
def test_interval_normalisation(interval, count, expected):
    r = mrr_by_month([sub("a", "2024-01-15T00:00:00Z", interval=interval, interval_count=count)], "2024-01-31")
    assert months(r) == {"2024-01": Decimal(expected)}


def test_quantity_trial_and_month_end_instant():
    r = mrr_by_month([sub("a", "2024-01-20T00:00:00Z", quantity=3, trial_end="2024-02-29T23:59:59Z")], "2024-03-31")
    assert months(r) == {"2024-01": 0, "2024-02": Decimal("30.00"), "2024-03": Decimal("30.00")}
    r = mrr_by_month([sub("a", "2024-01-20T00:00:00Z", trial_end="2024-03-01T00:00:00Z")], "2024-03-31")
    assert months(r)["2024-02"] == 0 and months(r)["2024-03"] == Decimal("10.00")


def test_cancel_immediate_vs_at_period_end():
    r = mrr_by_month([sub("a", "2024-01-05T00:00:00Z"),
                      sub("b", "2024-02-10T00:00:00Z", "subscription.canceled")], "2024-03-31")
    assert months(r) == {"2024-01": Decimal("10.00"), "2024-02": 0, "2024-03": 0}
    r = mrr_by_month([sub("a", "2024-01-05T00:00:00Z"),
                      sub("b", "2024-02-10T00:00:00Z", "subscription.canceled", effective_at="2024-03-05T00:00:00Z")],
                     "2024-03-31")
    assert months(r) == {"2024-01": Decimal("10.00"), "2024-02": Decimal("10.00"), "2024-03": 0}
    # cancellation effective exactly at the next month's first instant: still active at February's last instant
    r = mrr_by_month([sub("a", "2024-01-05T00:00:00Z"),
                      sub("b", "2024-02-10T00:00:00Z", "subscription.canceled", effective_at="2024-03-01T00:00:00Z")],
                     "2024-03-31")
    assert months(r)["2024-02"] == Decimal("10.00") and months(r)["2024-03"] == 0


def test_several_subscriptions_currencies_and_fx_at_state_start():
    r = mrr_by_month([
        sub("a", "2024-01-05T00:00:00Z", currency="EUR", unit_amount=1000),  # 10 EUR at 1.1 = 11.00
        sub("b", "2024-01-06T00:00:00Z", sub_id="s2", currency="JPY", unit_amount=1234),  # 1234 * 0.0067 = 8.2678 -> 8.27
        sub("c", "2024-01-07T00:00:00Z", sub_id="s3", currency="KWD", unit_amount=12345),  # 12.345 * 3.25 = 40.12125 -> 40.12
    ], "2024-04-30")
    assert months(r)["2024-01"] == Decimal("59.39")
    # the EUR rate moved on 2024-03-10 but the state did not: no FX-only expansion
    assert set(months(r).values()) == {Decimal("59.39")}
    assert [v[1] for k, v in sorted(r.items())] == ["new", "unchanged", "unchanged", "unchanged"]


def test_updates_replace_state_from_effective_at_in_event_time_order():
    events = [
        sub("c", "2024-03-02T00:00:00Z", "subscription.updated", quantity=1),  # downgrade arrives first in input
        sub("a", "2024-01-05T00:00:00Z", quantity=2),
        sub("b", "2024-02-01T00:00:00Z", "subscription.updated", quantity=5, effective_at="2024-02-15T00:00:00Z"),
    ]
    r = mrr_by_month(events, "2024-03-31")
    assert months(r) == {"2024-01": Decimal("20.00"), "2024-02": Decimal("50.00"), "2024-03": Decimal("10.00")}
    assert [r[("c1", m)][1] for m in ("2024-01", "2024-02", "2024-03")] == ["new", "expansion", "contraction"]


def test_partial_cancel_is_contraction_and_reactivation_after_gap():
    r = mrr_by_month([
        sub("a", "2024-01-05T00:00:00Z"), sub("b", "2024-01-05T00:00:00Z", sub_id="s2"),
        sub("c", "2024-02-10T00:00:00Z", "subscription.canceled", sub_id="s2"),
        sub("d", "2024-03-10T00:00:00Z", "subscription.canceled"),
        sub("e", "2024-05-10T00:00:00Z", sub_id="s3", unit_amount=500),
    ], "2024-06-30")
    moves = [r[("c1", m)][1] for m in ("2024-01", "2024-02", "2024-03", "2024-04", "2024-05", "2024-06")]
    assert moves == ["new", "contraction", "churn", "unchanged", "reactivation", "unchanged"]


def test_as_of_month_is_measured_at_the_end_of_the_as_of_day():
    events = [sub("a", "2024-01-05T00:00:00Z"),
              sub("b", "2024-01-20T12:00:00Z", "subscription.updated", quantity=4)]
    assert months(mrr_by_month(events, "2024-01-19")) == {"2024-01": Decimal("10.00")}
    assert months(mrr_by_month(events, "2024-01-20")) == {"2024-01": Decimal("40.00")}


def test_missing_fx_rate_names_currency_and_day():
    with pytest.raises(MissingFxRate, match=r"GBP -> USD on or before 2024-01-05"):
        mrr_by_month([sub("a", "2024-01-05T00:00:00Z", currency="GBP")], "2024-01-31")
    early = FxTable.from_rows([(dt.date(2024, 2, 1), "EUR", Decimal("1.1"))], "USD")
    with pytest.raises(MissingFxRate, match="EUR -> USD on or before 2024-01-05"):
        mrr_by_month([sub("a", "2024-01-05T00:00:00Z", currency="EUR")], "2024-02-28", fx=early)


def test_playbook_reference_periods_reconcile():
    """mrr-playbook's hand-checkable periods: [start, end) at month granularity, amounts in USD."""
    import csv
    from pathlib import Path

    rows = list(csv.DictReader(open(Path(__file__).parents[1] / "fixtures" / "mrr_playbook_subscription_periods.csv")))
    events = []
    for r in rows:
        events.append(sub(f"c{r['subscription_id']}", f"{r['start_date']}T00:00:00Z", customer=f"k{r['customer_id']}",
                          sub_id=f"s{r['subscription_id']}", unit_amount=int(r["monthly_amount"]) * 100))
        if r["end_date"]:
            events.append(sub(f"x{r['subscription_id']}", f"{r['end_date']}T00:00:00Z", "subscription.canceled",
                              customer=f"k{r['customer_id']}", sub_id=f"s{r['subscription_id']}"))
    as_of = max(max(r["start_date"], r["end_date"] or "") for r in rows)
    result = mrr_by_month(events, as_of)
    assert result
    for (customer, month), (mrr, _) in result.items():
        first = dt.date.fromisoformat(month + "-01")
        nxt = dt.date(first.year + first.month // 12, first.month % 12 + 1, 1)
        boundary = min(nxt, dt.date.fromisoformat(as_of) + dt.timedelta(days=1)).isoformat()
        expected = sum(int(r["monthly_amount"]) for r in rows if f"k{r['customer_id']}" == customer
                       and r["start_date"] < boundary and (not r["end_date"] or r["end_date"] >= boundary))
        assert mrr == Decimal(expected), (customer, month)


def test_movements_hold_at_the_largest_accepted_mrr():
    # 10^15 minor units per subscription (the parse bound), several per customer: far past int64 millionths
    top = 10**15
    r = mrr_by_month([
        sub("a", "2024-01-05T00:00:00Z", unit_amount=top), sub("b", "2024-01-05T00:00:00Z", sub_id="s2", unit_amount=top),
        sub("c", "2024-02-05T00:00:00Z", sub_id="s3", unit_amount=top),
        sub("d", "2024-03-10T00:00:00Z", "subscription.canceled", sub_id="s3"),
        sub("e", "2024-04-10T00:00:00Z", "subscription.canceled"),
        sub("f", "2024-04-10T00:00:00Z", "subscription.canceled", sub_id="s2"),
    ], "2024-05-31")
    assert r[("c1", "2024-02")] == (Decimal(3 * top) / 100, "expansion")
    moves = [r[("c1", m)][1] for m in ("2024-01", "2024-02", "2024-03", "2024-04", "2024-05")]
    assert moves == ["new", "expansion", "contraction", "churn", "unchanged"]
