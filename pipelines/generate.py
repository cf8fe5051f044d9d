"""`revenue generate`: realistic synthetic payment and usage events with their ground truth.

The generator simulates customers month by month (signups, trials, several
subscriptions on monthly/annual/weekly/quarterly/daily plans, upgrades and
downgrades, immediate and end-of-period cancellations, reactivations, invoices
with tax, failed payments and retries, refunds, metered usage) and writes the
events shuffled over many files (some gzipped, in sub-folders). It mixes in bad
lines at ``bad_rate`` and records, next to the events:

- ``ground_truth.json``: the exact number of lines, accepted events, duplicates and
  dead letters per reason code that a correct ingest must report;
- ``expected_mrr.csv``: every customer's MRR (reporting currency USD) for every month
  from their first event month through the as-of month;
- ``fx_rates.csv``: the FX table used.

The MRR oracle below is written independently of ``transforms`` (its own interval
factors, FX lookup and rounding) so tests compare two implementations of the contract.
"""

from __future__ import annotations

import bisect
import calendar
import csv
import datetime as dt
import gzip
import json
import random
import shutil
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import orjson

from transforms.errors import InputError

UTC = dt.UTC
SECONDS_PER_DAY = 86_400
SECONDS_PER_WEEK = 7 * SECONDS_PER_DAY
REPORTING_CURRENCY = "USD"  # the oracle's MRR is in USD cents
CENTS_PER_DOLLAR = 100
TRIAL_DAYS = 14
LAST_SIGNUP_DAY = 28  # signups fall on days 1-28 so every month has the day
# (code, minor-unit exponent, share of customers)
CURRENCIES = [("USD", 2, 0.45), ("EUR", 2, 0.2), ("GBP", 2, 0.13), ("JPY", 0, 0.12), ("KWD", 3, 0.10)]
CURRENCY_EXPONENT = {code: exponent for code, exponent, _ in CURRENCIES}
TAX_PERCENT = {"USD": 0, "EUR": 20, "GBP": 20, "JPY": 10, "KWD": 0}
# plan_id: (interval, interval_count, USD price in cents, max quantity)
PLANS = {
    "starter-monthly": ("month", 1, 2900, 1),
    "pro-monthly": ("month", 1, 9900, 12),
    "pro-annual": ("year", 1, 99000, 12),
    "team-quarterly": ("month", 3, 24000, 5),
    "support-weekly": ("week", 1, 2500, 1),
    "sensors-daily": ("day", 1, 150, 20),
    "enterprise-biennial": ("year", 2, 480000, 1),
}
PLAN_WEIGHTS = [30, 28, 14, 10, 8, 5, 5]
METERS = ("api_calls", "storage_gb", "emails_sent")
SEGMENTS = ("smb", "mid_market", "enterprise")
COUNTRIES = ("US", "DE", "GB", "JP", "KW", "FR", "NL", "CA")
BAD_KINDS = (
    "malformed_json", "missing_field", "invalid_field", "negative_amount", "unknown_currency",
    "naive_timestamp", "unknown_event_type", "duplicate", "conflicting_duplicate", "card_in_bad_line",
)  # fmt: skip


def _price(usd_cents: int, currency: str) -> int:
    """Local list price in minor units: EUR/GBP same figure, JPY x1.5 yen per cent, KWD 0.3 fils per cent."""
    if currency == "JPY":
        return usd_cents * 3 // 2
    if currency == "KWD":
        return usd_cents * 3
    return usd_cents


def _luhn_card(rng: random.Random) -> str:
    digits = [4] + [rng.randrange(10) for _ in range(14)]
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    digits.append((10 - total % 10) % 10)
    s = "".join(map(str, digits))
    return rng.choice([s, " ".join(s[i : i + 4] for i in range(0, 16, 4)), "-".join(s[i : i + 4] for i in range(0, 16, 4))])


def _iso(ts: int, offset_hours: int = 0) -> str:
    if offset_hours:
        tz = dt.timezone(dt.timedelta(hours=offset_hours))
        return dt.datetime.fromtimestamp(ts, tz).isoformat()
    return dt.datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _month_start(year: int, month: int) -> int:
    return int(dt.datetime(year, month, 1, tzinfo=UTC).timestamp())


def _add_months(ts: int, n: int) -> int:
    d = dt.datetime.fromtimestamp(ts, UTC)
    y, m = divmod(d.month - 1 + n, 12)
    last_day = calendar.monthrange(d.year + y, m + 1)[1]
    return int(d.replace(year=d.year + y, month=m + 1, day=min(d.day, last_day)).timestamp())


def _advance(ts: int, interval: str, count: int) -> int:
    if interval == "day":
        return ts + SECONDS_PER_DAY * count
    if interval == "week":
        return ts + SECONDS_PER_WEEK * count
    if interval == "month":
        return _add_months(ts, count)
    return _add_months(ts, 12 * count)


class _Oracle:
    """Independent MRR per the contract: state at the month's last instant, FX at the state's day."""

    FACTOR = {"month": Fraction(1), "year": Fraction(1, 12), "week": Fraction(52, 12), "day": Fraction(365, 12)}

    def __init__(self, fx_path: Path):
        self.dates: dict[str, list[dt.date]] = {}
        self.rates: dict[str, list[Fraction]] = {}
        rows = sorted(csv.DictReader(open(fx_path)), key=lambda r: (r["currency"], r["date"]))
        for r in rows:
            self.dates.setdefault(r["currency"], []).append(dt.date.fromisoformat(r["date"]))
            self.rates.setdefault(r["currency"], []).append(Fraction(r["rate"]))

    def rate(self, currency: str, day: dt.date) -> Fraction:
        if currency == REPORTING_CURRENCY:
            return Fraction(1)
        i = bisect.bisect_right(self.dates[currency], day) - 1
        if i < 0:
            raise InputError(f"generator: no FX rate for {currency} on {day}")
        return self.rates[currency][i]

    def sub_mrr_cents(self, state: dict, exponent: int) -> int:
        exact = Fraction(state["unit_amount"] * state["quantity"]) * self.FACTOR[state["interval"]]
        exact = exact / state["interval_count"] / 10**exponent
        day = dt.datetime.fromtimestamp(state["eff"], UTC).date()
        cents = exact * self.rate(state["currency"], day) * CENTS_PER_DOLLAR
        return int(cents + Fraction(1, 2)) if cents >= 0 else -int(-cents + Fraction(1, 2))


@dataclass(frozen=True)
class _Window:
    """The simulated period: ``start`` inclusive, ``end`` exclusive (epoch seconds)."""

    start: int
    end: int


class _SubscriptionLife(NamedTuple):
    """One simulated subscription, as the MRR oracle needs it."""

    subscription_id: str
    states: list[dict]  # plan states in order, each with its effective instant ``eff``
    cancel_eff: int | None
    trial_end: int | None


class _EventLog:
    """The shuffled event files, with bad lines mixed in, and what a correct ingest must count of them.

    Every event goes to a random file; after it, at ``bad_rate``, one bad line of a random kind
    goes to the same file. ``first_event`` and ``max_occurred`` track event times for the oracle.
    """

    def __init__(self, paths: list[Path], rng: random.Random, seed: int, bad_rate: float):
        self.rng = rng
        self._seed = seed
        self._bad_rate = bad_rate
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._handles = [gzip.open(p, "wb", compresslevel=1) if p.suffix == ".gz" else open(p, "wb", buffering=1 << 20)
                         for p in paths]  # fmt: skip
        self.counts = {"lines": 0, "accepted": 0, "duplicates": 0, "dead_letters": 0}
        self.dead_letters_by_reason: dict[str, int] = {}
        self.first_event: dict[str, int] = {}
        self.max_occurred = 0
        self._seq = 0

    def __enter__(self) -> _EventLog:
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.close()

    def next_id(self, prefix: str) -> str:
        self._seq += 1
        return f"{prefix}_{self._seed}_{self._seq:09d}"

    def event(self, etype: str, ts: int, customer_id: str, **fields) -> None:
        offset = 2 if self.rng.random() < 0.1 else 0
        ev = {"event_id": self.next_id("evt"), "event_type": etype, "occurred_at": _iso(ts, offset),
              "customer_id": customer_id, **fields}  # fmt: skip
        self.max_occurred = max(self.max_occurred, ts)
        if customer_id not in self.first_event or ts < self.first_event[customer_id]:
            self.first_event[customer_id] = ts
        self._write(ev)

    def _write(self, event: dict) -> None:
        handle = self._handles[self.rng.randrange(len(self._handles))]
        handle.write(orjson.dumps(event) + b"\n")
        self.counts["lines"] += 1
        self.counts["accepted"] += 1
        if self.rng.random() < self._bad_rate:
            self._write_bad_line(event, handle)

    def _write_bad_line(self, event: dict, handle) -> None:
        rng = self.rng
        kind = rng.choice(BAD_KINDS)
        bad = dict(event)
        bad["event_id"] = self.next_id("bad")
        if kind == "malformed_json":
            text = orjson.dumps(bad)[: -rng.randrange(2, 12)]
            reason = "malformed_json"
        elif kind == "card_in_bad_line":
            text = orjson.dumps(bad)[:-1] + b', "note": "card ' + _luhn_card(rng).encode() + b'"'
            reason = "malformed_json"
        elif kind == "missing_field":
            del bad["customer_id"]
            text, reason = orjson.dumps(bad), "missing_field"
        elif kind == "invalid_field":
            bad["customer_id"] = rng.randrange(10**6)
            text, reason = orjson.dumps(bad), "invalid_field"
        elif kind == "negative_amount" and ("amount" in bad or "unit_amount" in bad):
            bad["amount" if "amount" in bad else "unit_amount"] = -rng.randrange(1, 10**5)
            text, reason = orjson.dumps(bad), "negative_amount"
        elif kind == "unknown_currency" and "currency" in bad:
            bad["currency"] = rng.choice(["XYZ", "EURO", "US$", "ZZZ"])
            text, reason = orjson.dumps(bad), "unknown_currency"
        elif kind == "naive_timestamp":
            bad["occurred_at"] = bad["occurred_at"][:19]
            text, reason = orjson.dumps(bad), "naive_timestamp"
        elif kind == "duplicate":
            # equal as parsed JSON, different bytes: keys in reverse order
            handle.write(orjson.dumps(dict(reversed(list(event.items())))) + b"\n")
            self.counts["lines"] += 1
            self.counts["duplicates"] += 1
            return
        elif kind == "conflicting_duplicate":
            bad = dict(event)
            bad["replayed_by"] = "billing-sync-v2"
            text, reason = orjson.dumps(bad), "conflicting_duplicate"
        else:
            bad["event_type"] = rng.choice(["subscription.paused", "invoice.voided", "Invoice.Paid"])
            text, reason = orjson.dumps(bad), "unknown_event_type"
        handle.write(text + b"\n")
        self.counts["lines"] += 1
        self.counts["dead_letters"] += 1
        self.dead_letters_by_reason[reason] = self.dead_letters_by_reason.get(reason, 0) + 1


@dataclass(frozen=True)
class _Customer:
    """What every step of one customer's simulation shares."""

    rng: random.Random
    log: _EventLog
    customer_id: str
    currency: str
    window_end: int

    def event(self, etype: str, ts: int, **fields) -> None:
        self.log.event(etype, ts, self.customer_id, **fields)


def generate(output: Path, customers: int = 300, months: int = 24, seed: int = 7, bad_rate: float = 0.01,
             start: str = "2024-01", n_files: int | None = None) -> dict:  # fmt: skip
    """Write ``events/``, ``fx_rates.csv``, ``expected_mrr.csv`` and ``ground_truth.json`` under ``output``.

    Returns the ground truth. Raises ``InputError`` for a malformed ``start`` before writing anything.
    """
    window = _parse_window(start, months)
    output = Path(output)
    events_dir = _fresh_events_dir(output)
    oracle = _Oracle(_copy_fx_rates(output))
    rng = random.Random(seed)
    n_files = n_files or _default_file_count(customers, months)
    with _EventLog(_event_paths(events_dir, n_files), rng, seed, bad_rate) as log:
        subscriptions = _simulate_customers(log, customers, seed, window)
    as_of = dt.datetime.fromtimestamp(log.max_occurred, UTC).date()
    _write_expected_mrr(output / "expected_mrr.csv", _expected_mrr(oracle, subscriptions, log.first_event, as_of))
    truth = {
        "seed": seed, "customers": customers, "months": months, "start": start, "bad_rate": bad_rate,
        "files": n_files, "as_of": as_of.isoformat(), "reporting_currency": REPORTING_CURRENCY,
        "counts": {**log.counts, "dead_letters_by_reason": dict(sorted(log.dead_letters_by_reason.items()))},
    }  # fmt: skip
    (output / "ground_truth.json").write_text(json.dumps(truth, indent=2) + "\n")
    return truth


def _parse_window(start: str, months: int) -> _Window:
    try:
        y0, m0 = (int(x) for x in start.split("-"))
        window_start = _month_start(y0, m0)
    except ValueError:
        raise InputError(f"--start must be YYYY-MM, got {start!r}") from None
    return _Window(window_start, _add_months(window_start, months))


def _fresh_events_dir(output: Path) -> Path:
    events_dir = output / "events"
    if events_dir.exists():
        shutil.rmtree(events_dir)
    events_dir.mkdir(parents=True)
    return events_dir


def _copy_fx_rates(output: Path) -> Path:
    from transforms.fx import bundled_rates_path

    path = output / "fx_rates.csv"
    shutil.copyfile(bundled_rates_path(), path)
    return path


def _default_file_count(customers: int, months: int) -> int:
    est_events = customers * months * 7
    return max(8, min(400, est_events // 200_000 + 8))


def _event_paths(events_dir: Path, n_files: int) -> list[Path]:
    """Files spread over four sub-folders; every third one gzipped."""
    return [events_dir / f"batch-{i % 4:02d}" / (f"events-{i:04d}.jsonl" + (".gz" if i % 3 == 1 else ""))
            for i in range(n_files)]  # fmt: skip


def _write_expected_mrr(path: Path, rows: list[tuple[str, str, str]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["customer_id", "month", "mrr"])
        writer.writerows(rows)


def _simulate_customers(log: _EventLog, customers: int, seed: int, window: _Window) -> dict[str, list[_SubscriptionLife]]:
    """Emit every customer's events; return their subscriptions by customer id."""
    subscriptions = {}
    for number in range(customers):
        customer_id = f"cus_{seed}_{number:07d}"
        lives = _simulate_customer(log, window, number, customer_id)
        if lives:
            subscriptions[customer_id] = lives
    return subscriptions


def _simulate_customer(log: _EventLog, window: _Window, number: int, customer_id: str) -> list[_SubscriptionLife]:
    """Signup, one to three subscriptions (and their reactivations), maybe usage."""
    rng = log.rng
    currency = rng.choices([code for code, _, _ in CURRENCIES], [share for _, _, share in CURRENCIES])[0]
    signup = _signup_time(rng, window)
    created = {"segment": rng.choice(SEGMENTS), "country": rng.choice(COUNTRIES),
               "email": f"billing+{number}@example.com", "name": f"Customer {number}"}  # fmt: skip
    if rng.random() < 0.03:
        created["note"] = f"customer read card {_luhn_card(rng)} over the phone"
    log.event("customer.created", signup, customer_id, **created)
    customer = _Customer(rng, log, customer_id, currency, window.end)
    lives = []
    pending = _subscription_starts(rng, signup)
    while pending:
        begin = pending.pop(0)
        if begin >= window.end:
            continue
        life, reactivate_at = _simulate_subscription(customer, begin)
        lives.append(life)
        if reactivate_at is not None and reactivate_at < window.end:
            pending.append(reactivate_at)
    if rng.random() < 0.6:
        _usage(customer, signup)
    return lives


def _signup_time(rng: random.Random, window: _Window) -> int:
    """A random instant in the window's first 85%, moved to a day of month that every month has."""
    window_seconds = window.end - window.start
    signup = window.start + int(rng.random() * window_seconds * 0.85)
    signup_day = dt.datetime.fromtimestamp(signup, UTC)
    return int(signup_day.replace(day=min(signup_day.day, LAST_SIGNUP_DAY)).timestamp())


def _subscription_starts(rng: random.Random, signup: int) -> list[int]:
    starts = []
    n_subs = rng.choices([1, 2, 3], [70, 22, 8])[0]
    sub_start = signup + rng.randrange(60, 3600)
    for _ in range(n_subs):
        starts.append(sub_start)
        sub_start = sub_start + rng.randrange(0, 200) * SECONDS_PER_DAY
    return starts


def _draw_plan(rng: random.Random) -> tuple[str, tuple[str, int, int, int]]:
    plan_id = rng.choices(list(PLANS), PLAN_WEIGHTS)[0]
    return plan_id, PLANS[plan_id]


def _simulate_subscription(customer: _Customer, begin: int) -> tuple[_SubscriptionLife, int | None]:
    """Emit one subscription's life; return it and when the customer comes back (reactivation) or None."""
    sub_id, states, trial_end = _open_subscription(customer, begin)
    billing = trial_end or begin
    cancel_eff, reactivate_at = _walk_changes(customer, sub_id, states, billing, begin)
    _invoice_periods(customer, sub_id, states, billing, stop=min(cancel_eff or customer.window_end, customer.window_end))
    return _SubscriptionLife(sub_id, states, cancel_eff, trial_end), reactivate_at


def _open_subscription(customer: _Customer, begin: int) -> tuple[str, list[dict], int | None]:
    """Emit ``subscription.created``; return the id, the first state and the trial's end (or None)."""
    rng, currency = customer.rng, customer.currency
    sub_id = customer.log.next_id("sub")
    plan_id, (interval, count, usd, max_qty) = _draw_plan(rng)
    state = {"plan_id": plan_id, "currency": currency, "unit_amount": _price(usd, currency),
             "quantity": rng.randint(1, max_qty), "interval": interval, "interval_count": count, "eff": begin}  # fmt: skip
    trial_end = begin + TRIAL_DAYS * SECONDS_PER_DAY if rng.random() < 0.25 else None
    fields = {"subscription_id": sub_id, "plan_id": plan_id, "currency": currency.lower() if rng.random() < 0.05
              else currency, "unit_amount": state["unit_amount"], "quantity": state["quantity"], "interval": interval}  # fmt: skip
    if count != 1:
        fields["interval_count"] = count
    if trial_end:
        fields["trial_end"] = _iso(trial_end)
    customer.event("subscription.created", begin, **fields)
    return sub_id, [state], trial_end


def _walk_changes(customer: _Customer, sub_id: str, states: list[dict], billing: int,
                  begin: int) -> tuple[int | None, int | None]:  # fmt: skip
    """Walk month by month deciding changes (appended to ``states``) until a cancellation or the window's end.

    Returns the cancellation's effective instant and the reactivation instant (each or None).
    """
    rng = customer.rng
    t = begin
    while True:
        t = t + rng.randrange(20, 40) * SECONDS_PER_DAY
        if t >= customer.window_end:
            return None, None
        r = rng.random()
        if r < 0.07:
            t = _change_plan(customer, sub_id, states, t)
        elif r < 0.11:
            return _cancel(customer, sub_id, states[-1], billing, t)


def _change_plan(customer: _Customer, sub_id: str, states: list[dict], t: int) -> int:
    """Maybe emit an upgrade/downgrade at ``t`` (quantity or plan); return the walk's next instant."""
    rng = customer.rng
    new = dict(states[-1])
    if rng.random() < 0.5 and PLANS[new["plan_id"]][3] > 1:
        new["quantity"] = max(1, new["quantity"] + rng.choice([-3, -2, -1, 1, 1, 2, 4]))
    else:
        plan_id, (interval, count, usd, max_qty) = _draw_plan(rng)
        new.update(plan_id=plan_id, unit_amount=_price(usd, customer.currency), interval=interval,
                   interval_count=count, quantity=min(new["quantity"], max_qty))  # fmt: skip
    if new == states[-1]:
        return t
    new["eff"] = t if rng.random() < 0.7 else t + rng.randrange(1, 5) * SECONDS_PER_DAY
    if new["eff"] >= customer.window_end:
        return t
    fields = {"subscription_id": sub_id, "plan_id": new["plan_id"], "currency": customer.currency,
              "unit_amount": new["unit_amount"], "quantity": new["quantity"], "interval": new["interval"],
              "interval_count": new["interval_count"]}  # fmt: skip
    if new["eff"] != t:
        fields["effective_at"] = _iso(new["eff"])
    customer.event("subscription.updated", t, **fields)
    states.append(new)
    return new["eff"]


def _cancel(customer: _Customer, sub_id: str, current: dict, billing: int, t: int) -> tuple[int, int | None]:
    """Emit an immediate or end-of-period cancellation at ``t``; return its effective instant and any reactivation."""
    rng = customer.rng
    if rng.random() < 0.5:
        cancel_eff = t
        customer.event("subscription.canceled", t, subscription_id=sub_id)
    else:
        period_end = billing
        while period_end <= t:
            period_end = _advance(period_end, current["interval"], current["interval_count"])
        cancel_eff = period_end
        customer.event("subscription.canceled", t, subscription_id=sub_id, effective_at=_iso(cancel_eff),
                       reason="too_expensive")  # fmt: skip
    reactivate_at = cancel_eff + rng.randrange(20, 130) * SECONDS_PER_DAY if rng.random() < 0.4 else None
    return cancel_eff, reactivate_at


def _invoice_periods(customer: _Customer, sub_id: str, states: list[dict], billing: int, stop: int) -> None:
    """One invoice per billing period from ``billing`` until ``stop`` (daily plans are billed monthly)."""
    period = billing
    invoice_n = 0
    while period < stop:
        current = [s for s in states if s["eff"] <= period][-1]
        step = ("month", 1) if current["interval"] == "day" else (current["interval"], current["interval_count"])
        nxt = _advance(period, *step)
        days = (nxt - period) // SECONDS_PER_DAY if current["interval"] == "day" else 1
        net = current["unit_amount"] * current["quantity"] * days
        tax = net * TAX_PERCENT[customer.currency] // 100
        invoice_n += 1
        _invoice(customer, sub_id, f"in_{sub_id}_{invoice_n:04d}", net, tax, period, nxt)
        period = nxt


def _invoice(customer: _Customer, sub_id: str, invoice_id: str, net: int, tax: int, period: int, nxt: int) -> None:
    """Failed attempts (sometimes), the payment if it falls in the window, and sometimes a refund."""
    rng, currency, window_end = customer.rng, customer.currency, customer.window_end
    paid_at = period + rng.randrange(60, 7200)
    if rng.random() < 0.08:
        attempts = rng.choice([1, 1, 2])
        for a in range(attempts):
            if paid_at >= window_end:
                break
            customer.event("invoice.payment_failed", paid_at, invoice_id=invoice_id, currency=currency,
                           amount=net + tax, subscription_id=sub_id, attempt=a + 1)  # fmt: skip
            paid_at += rng.randrange(1, 3) * SECONDS_PER_DAY
    if paid_at < window_end:
        customer.event("invoice.paid", paid_at, invoice_id=invoice_id, currency=currency, amount=net + tax,
                       tax=tax, subscription_id=sub_id, period_start=_iso(period), period_end=_iso(nxt))  # fmt: skip
        if rng.random() < 0.03:
            refund_at = paid_at + rng.randrange(1, 10) * SECONDS_PER_DAY
            if refund_at < window_end:
                amount = net + tax if rng.random() < 0.5 else (net + tax) // 2
                customer.event("charge.refunded", refund_at, invoice_id=invoice_id, currency=currency,
                               amount=amount, reason=rng.choice(["requested_by_customer", "duplicate"]))  # fmt: skip


def _usage(customer: _Customer, signup: int) -> None:
    rng = customer.rng
    meters = rng.sample(METERS, rng.randint(1, 2))
    t = signup + SECONDS_PER_DAY
    while t < customer.window_end:
        for meter in meters:
            for _ in range(rng.randint(1, 4)):
                ts = t + rng.randrange(0, 28 * SECONDS_PER_DAY)
                if ts >= customer.window_end:
                    continue
                if meter == "storage_gb":
                    quantity = rng.randrange(0, 50000) / 100  # e.g. 123.45 GB
                else:
                    quantity = rng.randrange(1, 20000)
                customer.event("usage.recorded", ts, meter=meter, quantity=quantity)
        t = _add_months(t, 1)


def _expected_mrr(oracle: _Oracle, sub_states: dict[str, list[_SubscriptionLife]], first_event: dict[str, int],
                  as_of: dt.date) -> list[tuple[str, str, str]]:  # fmt: skip
    rows = []
    as_of_end = int(dt.datetime.combine(as_of + dt.timedelta(days=1), dt.time(), UTC).timestamp())
    for customer_id in sorted(first_event):
        first = dt.datetime.fromtimestamp(first_event[customer_id], UTC)
        y, m = first.year, first.month
        while (y, m) <= (as_of.year, as_of.month):
            ny, nm = (y + 1, 1) if m == 12 else (y, m + 1)
            boundary = min(_month_start(ny, nm), as_of_end)
            total = 0
            for _, states, cancel_eff, trial_end in sub_states.get(customer_id, []):
                if cancel_eff is not None and cancel_eff < boundary:
                    continue
                if trial_end is not None and trial_end >= boundary:
                    continue
                live = [s for s in states if s["eff"] < boundary]
                if live:
                    exponent = CURRENCY_EXPONENT[live[-1]["currency"]]
                    total += oracle.sub_mrr_cents(live[-1], exponent)
            rows.append((customer_id, f"{y:04d}-{m:02d}-01", f"{total // CENTS_PER_DOLLAR}.{total % CENTS_PER_DOLLAR:02d}"))
            y, m = ny, nm
    return rows
