"""Closed periods and restatements (CONTRACT section 7): `revenue close`, `revenue reopen`, and the
check every warehouse build makes against the closed months.

The close history (``period_closes``), the figures frozen at each close (``closed_figures``) and
the restatements found since (``restatements``, with the events behind each in
``restatement_events``) are Delta tables in the lake: no event rebuilds them, so a
``--full-refresh`` keeps them. Each build loads them whole into its ``periods`` schema (before dbt
runs, ``prepare_build``; again after the gate, with this run's restatements) and shows them
through dbt views (``period_closes``, ``mrr_monthly_reported``, ``restatements``,
``restatement_events``); because they are views, a close or reopen is visible in the published
warehouse at once: the action reloads those lake tables into a copy of the published file and
replaces it atomically, without a dbt build.

Rules: months close in order (every earlier month of ``mrr_monthly`` closed first); the as-of
month never closes; a close freezes the month's ``mrr_monthly_reported`` row of the published
warehouse, which must have been built from the lake as it is now; a reopen unfreezes the month
and every later closed month (one ``reopen`` row each).

After each build (``record_restatements``, called by ``pipelines.transform``), every closed month's
restated figures are compared with the frozen ones and with the last restatement recorded since
that close; each metric that moved gets a row. ``acted_at`` of an action is the one wall-clock
value here; a restatement's ``detected_at`` is the run's as-of date, so the same lake gives the
same rows (the run id, itself time-based, identifies the run).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import pyarrow as pa

from pipelines import lake
from pipelines.config import Materiality, RunConfig
from pipelines.layout import DataLayout
from pipelines.manifest import new_run_id, write_manifest
from transforms import schemas
from transforms.errors import InputError, LakeError
from transforms.months import next_month

log = logging.getLogger(__name__)

# restated metrics: the mrr_monthly column (or the cash figure) and the events that can move it
MRR_METRICS = ("mrr", "active_customers", "new_mrr", "expansion_mrr", "reactivation_mrr", "contraction_mrr",
               "churned_mrr")  # fmt: skip
REVENUE_METRICS = ("net_revenue",)
METRICS = MRR_METRICS + REVENUE_METRICS
MONEY_METRICS = tuple(m for m in METRICS if m != "active_customers")
SUBSCRIPTION_EVENTS = ("subscription.created", "subscription.updated", "subscription.canceled")
PAYMENT_EVENTS = ("invoice.paid", "charge.refunded")
# the lake tables a warehouse is built from: a close needs the published warehouse built from these versions
BUILD_SOURCES = ("events", "usage", "customer_months", "customer_lifetime", "revenue_daily")
FROZEN_COLUMNS = [f.name for f in schemas.CLOSED_FIGURES if f.name not in ("closed_at",)]
CASH_COLUMNS = ("gross_revenue", "tax", "refunds", "net_revenue")
LOCK_WAIT_SECONDS = 120
SCHEMA = "periods"  # the warehouse schema holding the closed-period tables (owned by this module)


@dataclass
class ActionResult:
    action: str
    months: list[dt.date]
    acted_at: dt.datetime
    action_id: str
    frozen: dict = field(default_factory=dict)
    reporting_currency: str | None = None


# ------------------------------------------------------------------ state


def close_history(layout: DataLayout) -> list[dict]:
    """Every close and reopen, oldest first."""
    rows = lake.read_table(layout, "period_closes").to_pylist()
    return sorted(rows, key=lambda r: (r["acted_at"], r["month"]))


def closed_months(layout: DataLayout) -> dict[dt.date, dict]:
    """The months closed now (their latest action is a close) -> that close's row."""
    latest: dict[dt.date, dict] = {}
    for row in close_history(layout):
        latest[row["month"]] = row
    return {m: r for m, r in sorted(latest.items()) if r["action"] == "close"}


def _acted_at(history: list[dict]) -> dt.datetime:
    """Now (UTC, microseconds), strictly after every recorded action, so actions order by time."""
    now = dt.datetime.now(dt.UTC)
    if history:
        last = history[-1]["acted_at"]
        now = max(now, last + dt.timedelta(microseconds=1))
    return now


def _commit_rows(layout: DataLayout, table: str, rows: list[dict], action_id: str) -> int | None:
    data = pa.Table.from_pylist(rows, schema=schemas.with_partition_column(table))
    files = lake.write_partitioned(data, layout.table(table), "month", f"part-{action_id}.parquet", [])
    return lake.commit(layout, table, files, action_id)


@contextlib.contextmanager
def _locks(layout: DataLayout):
    """The lake's writer lock and the warehouse's build lock: no run writes or builds meanwhile."""
    from pipelines.transform import warehouse_lock  # a sibling stage: imported late (it imports this module)

    with lake.lake_lock(layout), warehouse_lock(layout):
        yield


# ------------------------------------------------------------------ the published warehouse


def _published(layout: DataLayout):
    import duckdb

    if not layout.warehouse.exists():
        raise InputError(f"no published warehouse at {layout.warehouse}: run `revenue run` first")
    return duckdb.connect(str(layout.warehouse), read_only=True)


def _build_info(con) -> dict:
    try:
        run_id, as_of, currency, versions = con.execute(
            f"select run_id, as_of, reporting_currency, lake_versions from {SCHEMA}.build_info").fetchall()[0]
    except Exception:  # noqa: BLE001 - a warehouse built before closed periods existed
        raise InputError("the published warehouse predates closed periods: run `revenue run` (or "
                         "`revenue transform`) once, then close") from None  # fmt: skip
    return {"run_id": run_id, "as_of": as_of, "reporting_currency": currency, "lake_versions": json.loads(versions)}


def load_period_tables(con, layout: DataLayout) -> None:
    """(Re)load the closed-period lake tables, whole and at their latest versions, into a warehouse
    file's ``periods`` schema (dbt's ``lake_periods`` source). They are small (one row per action,
    per restated metric) and this module alone writes that schema."""
    con.execute(f"create schema if not exists {SCHEMA}")
    for table in schemas.PERIOD_TABLES:
        data = lake.dataset(layout, table)
        con.register("period_source", data if data is not None else schemas.with_partition_column(table).empty_table())
        con.execute(f'create or replace table {SCHEMA}."{table}" as select * from period_source')
        con.unregister("period_source")


def prepare_build(build_file: Path, layout: DataLayout) -> None:
    """Before a warehouse build's dbt run: the closed-period tables as they are now (its sources)."""
    import duckdb

    con = duckdb.connect(str(build_file))
    try:
        load_period_tables(con, layout)
    finally:
        con.close()


def _republish(layout: DataLayout, action_id: str) -> None:
    """Reload the closed-period tables into a copy of the published warehouse and replace it atomically.

    Its closed-period models are views, so they show the action at once; nothing else changes."""
    import duckdb

    published = layout.warehouse
    if not published.exists():
        return
    build_root = layout.build_dir(action_id)
    copy = build_root / published.name  # same file name: the views name the catalog after it
    try:
        build_root.mkdir(parents=True)
        shutil.copy2(published, copy)
        con = duckdb.connect(str(copy))
        try:
            load_period_tables(con, layout)
            con.execute("checkpoint")
        finally:
            con.close()
        os.replace(copy, published)
        lake.fsync_dir(published.parent)
    finally:
        shutil.rmtree(build_root, ignore_errors=True)


# ------------------------------------------------------------------ close and reopen


def close_month(layout: DataLayout, month: dt.date, by: str, note: str | None = None) -> ActionResult:
    """Close ``month``: freeze its row of the published ``mrr_monthly_reported`` (and its cash
    figures) and record the action with the lake versions it saw."""
    by = _required(by, "--by")
    with _locks(layout):
        history = close_history(layout)
        closed = closed_months(layout)
        con = _published(layout)
        try:
            info = _build_info(con)
            current = lake.versions(layout)
            stale = {t: (v, current.get(t)) for t, v in info["lake_versions"].items()
                     if t in BUILD_SOURCES and current.get(t) != v}  # fmt: skip
            if stale:
                what = ", ".join(f"{t} v{old} -> v{new}" for t, (old, new) in sorted(stale.items()))
                raise InputError(f"the published warehouse is older than the lake ({what}): run `revenue run` or "
                                 f"`revenue transform` first, then close {month:%Y-%m}")  # fmt: skip
            as_of_month = dt.date(info["as_of"].year, info["as_of"].month, 1)
            if month >= as_of_month:
                raise InputError(f"cannot close {month:%Y-%m}: only months before the as-of month "
                                 f"({as_of_month:%Y-%m}, data as of {info['as_of']}) can close")  # fmt: skip
            months = [r[0] for r in con.execute('select "month" from mrr_monthly order by 1').fetchall()]
            if month not in months:
                span = f"{months[0]:%Y-%m}..{months[-1]:%Y-%m}" if months else "none"
                raise InputError(f"cannot close {month:%Y-%m}: it has no data (months with data: {span})")
            if month in closed:
                raise InputError(f"{month:%Y-%m} is already closed (closed {closed[month]['acted_at']:%Y-%m-%d %H:%M} "
                                 f"UTC by {closed[month]['acted_by']}); reopen it first to close it again")  # fmt: skip
            open_before = [m for m in months if m < month and m not in closed]
            if open_before:
                raise InputError(f"cannot close {month:%Y-%m}: months close in order and "
                                 f"{', '.join(f'{m:%Y-%m}' for m in open_before)} "
                                 f"{'is' if len(open_before) == 1 else 'are'} still open")  # fmt: skip
            frozen = _frozen_row(con, month)
        finally:
            con.close()
        acted_at, action_id = _acted_at(history), new_run_id()
        versions = json.dumps(current, sort_keys=True)
        # figures first: a close row is what makes them count, so a kill between the commits leaves no close
        _commit_rows(layout, "closed_figures", [{**frozen, "closed_at": acted_at, "month": month}], action_id)
        _commit_rows(layout, "period_closes", [{"month": month, "action": "close", "acted_at": acted_at,
                                                "acted_by": by, "note": note, "lake_versions": versions}], action_id)
        _republish(layout, action_id)
    write_manifest(layout, action_id, "close", {"month": f"{month:%Y-%m}", "acted_at": acted_at.isoformat(),
                                                "acted_by": by, "note": note, "lake_versions": current,
                                                "frozen": frozen})  # fmt: skip
    return ActionResult("close", [month], acted_at, action_id, frozen, info["reporting_currency"])


def reopen_month(layout: DataLayout, month: dt.date, by: str, reason: str) -> ActionResult:
    """Reopen ``month`` and every later closed month (one ``reopen`` row each, with the reason)."""
    by, reason = _required(by, "--by"), _required(reason, "--reason")
    with _locks(layout):
        history = close_history(layout)
        closed = closed_months(layout)
        if month not in closed:
            state = "was reopened" if any(r["month"] == month for r in history) else "was never closed"
            raise InputError(f"cannot reopen {month:%Y-%m}: it is not closed (it {state})")
        months = [m for m in closed if m >= month]
        acted_at, action_id = _acted_at(history), new_run_id()
        versions = json.dumps(lake.versions(layout), sort_keys=True)
        rows = [{"month": m, "action": "reopen", "acted_at": acted_at, "acted_by": by, "lake_versions": versions,
                 "note": reason if m == month else f"{reason} (reopened with {month:%Y-%m})"} for m in months]
        _commit_rows(layout, "period_closes", rows, action_id)
        _republish(layout, action_id)
    write_manifest(layout, action_id, "reopen", {"months": [f"{m:%Y-%m}" for m in months],
                                                 "acted_at": acted_at.isoformat(), "acted_by": by,
                                                 "reason": reason})  # fmt: skip
    return ActionResult("reopen", months, acted_at, action_id)


def _required(value: str | None, flag: str) -> str:
    value = (value or "").strip()
    if not value:
        raise InputError(f"{flag} must not be empty")
    return value


def _frozen_row(con, month: dt.date) -> dict:
    names = ", ".join(f'"{c}"' for c in FROZEN_COLUMNS if c not in CASH_COLUMNS)
    cur = con.execute(f'select {names} from mrr_monthly_reported where "month" = ?', [month])
    row = dict(zip([d[0] for d in cur.description], cur.fetchall()[0], strict=True))
    row.update(monthly_cash(con, month))
    return row


def monthly_cash(con, month: dt.date) -> dict[str, Decimal]:
    """The month's cash figures in the reporting currency, from fct_revenue_daily."""
    cur = con.execute(
        "select coalesce(sum(gross_revenue_reporting), 0), coalesce(sum(tax_reporting), 0), "
        "coalesce(sum(refunds_reporting), 0), coalesce(sum(net_revenue_reporting), 0) from fct_revenue_daily "
        "where \"date\" >= ? and \"date\" < ?", [month, next_month(month)])  # fmt: skip
    return dict(zip(CASH_COLUMNS, cur.fetchall()[0], strict=True))


# ------------------------------------------------------------------ after a build: restatements


@dataclass
class RestatementCheck:
    rows: list[dict] = field(default_factory=list)
    event_rows: list[dict] = field(default_factory=list)  # restatement_events: which events each month counted
    closed_months: list[str] = field(default_factory=list)
    booked_in_month: str | None = None
    reporting_currency: str | None = None

    def summary(self) -> dict:
        return {
            "reporting_currency": self.reporting_currency,
            "closed_months": self.closed_months,
            "rows": len(self.rows),
            "material": [_describe(r) for r in self.rows if r["material"]],
            "restated": [_describe(r) for r in self.rows],
            "booked_in_month": self.booked_in_month,
        }


def _describe(r: dict) -> dict:
    return {"month": f"{r['month']:%Y-%m}", "metric": r["metric"], "reported": str(r["reported_value"]),
            "restated": str(r["restated_value"]), "difference": str(r["difference"]), "events": r["events"],
            "material": r["material"]}  # fmt: skip


@contextlib.contextmanager
def _lake_lock_waiting(layout: DataLayout, seconds: float = LOCK_WAIT_SECONDS):
    """The derived tables' lock (restatements are derived from the pinned ingest tables), waiting for
    another writer of them (a metrics run) to finish first."""
    deadline, tick = time.monotonic() + seconds, threading.Event()
    while True:
        try:
            with lake.lake_lock(layout, (lake.DERIVED_SCOPE,)):
                yield
            return
        except LakeError:
            if time.monotonic() > deadline:
                raise
            tick.wait(0.2)


def record_restatements(config: RunConfig, run_id: str, build_file: Path, pinned: dict[str, int]) -> dict:
    """Called after a build passed its tests and gate, before it is published: record the build's
    lake versions in it, compare each closed month's restated figures with those reported at its
    close, append a restatement row per changed metric to the lake, and show them in the build.
    Returns the run's restatement summary."""
    import duckdb

    layout = config.layout
    con = duckdb.connect(str(build_file))
    try:
        con.execute("set TimeZone = 'UTC'")
        con.execute(f"create schema if not exists {SCHEMA}")
        con.execute(f"create or replace table {SCHEMA}.build_info as select ? as run_id, cast(? as date) as as_of, "
                    "? as reporting_currency, ? as lake_versions",
                    [run_id, config.as_of, config.reporting_currency, json.dumps(pinned, sort_keys=True)])  # fmt: skip
        if not lake.is_table(layout, "period_closes"):
            return RestatementCheck().summary()
        with _lake_lock_waiting(layout):
            check = _detect(con, layout, config, run_id, pinned)
            if check.rows:
                _commit_rows(layout, "restatements", check.rows, f"{run_id}-restatements")
                if check.event_rows:
                    _commit_rows(layout, "restatement_events", check.event_rows, f"{run_id}-restatements")
                load_period_tables(con, layout)
        con.execute("checkpoint")
    finally:
        con.close()
    return check.summary()


def _detect(con, layout: DataLayout, config: RunConfig, run_id: str, pinned: dict[str, int]) -> RestatementCheck:
    closed = closed_months(layout)
    live = {r["month"]: r for r in _select(con, 'select * from mrr_monthly order by "month"')}
    check = RestatementCheck(closed_months=[f"{m:%Y-%m}" for m in closed], reporting_currency=config.reporting_currency)
    open_months = [m for m in live if m not in closed]
    booked = open_months[0] if open_months else None
    check.booked_in_month = f"{booked:%Y-%m}" if booked else None
    frozen = {(r["month"], r["closed_at"]): r for r in lake.read_table(layout, "closed_figures").to_pylist()}
    last: dict[tuple, Decimal] = {}
    for r in sorted(lake.read_table(layout, "restatements").to_pylist(), key=lambda r: r["run_id"]):  # time order
        last[(r["month"], r["close_acted_at"], r["metric"])] = r["restated_value"]
    limits: Materiality = config.materiality
    arrived: dict = {}  # events version at a close -> the events that reached the lake since
    for month, close in closed.items():
        if month not in live:
            continue  # outside this build's months (an earlier --as-of)
        reported = frozen.get((month, close["acted_at"]))
        if reported is None:
            continue
        restated = {**live[month], **monthly_cash(con, month)}
        changed = []
        for metric in METRICS:
            value = Decimal(restated[metric])
            baseline = last.get((month, close["acted_at"], metric), reported[metric])
            if value != Decimal(baseline):
                changed.append((metric, Decimal(reported[metric]), value))
        if not changed:
            continue
        counts, events = _events_since_close(con, layout, month, close, config, pinned, arrived)
        for metric, was, now in changed:
            group = "net_revenue" if metric in REVENUE_METRICS else "mrr"
            check.rows.append({
                "month": month, "metric": metric, "reported_value": was, "restated_value": now,
                "difference": now - was, "events": counts.get(group) if counts is not None else None,
                "run_id": run_id, "detected_at": config.as_of, "booked_in_month": booked,
                "close_acted_at": close["acted_at"], "events_version": pinned.get("events"),
                "material": limits.is_material(metric, was, now),
            })  # fmt: skip
        check.event_rows += [{**e, "month": month, "run_id": run_id, "close_acted_at": close["acted_at"]}
                             for e in events]  # fmt: skip
    return check


def _select(con, sql: str, params=()) -> list[dict]:
    cur = con.execute(sql, params)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _events_since_close(con, layout: DataLayout, month: dt.date, close: dict, config: RunConfig,
                        pinned: dict[str, int], cache: dict) -> tuple[dict | None, list[dict]]:  # fmt: skip
    """Payment events in the build's lake snapshot that were not in the lake at the close and can move
    the month: subscription events effective or occurring by its end (MRR metrics), invoices paid and
    refunds dated in it (net revenue). None when the close's version is no longer readable."""
    at_close = json.loads(close["lake_versions"]).get("events")
    if at_close not in cache:  # closes made in one sitting share a version: one lake diff for all
        cache[at_close] = _arrived_since(con, layout, at_close, config, pinned)
    arrived = cache[at_close]
    if arrived is None:
        return None, []
    start = dt.datetime(month.year, month.month, 1, tzinfo=dt.UTC)
    end = dt.datetime.combine(next_month(month), dt.time(), tzinfo=dt.UTC)
    events = []
    for e in arrived:
        if e["event_type"] in SUBSCRIPTION_EVENTS and min(e["occurred_at"], e["effective_at"] or e["occurred_at"]) < end:
            events.append({"affects": "mrr", **e})
        elif e["event_type"] in PAYMENT_EVENTS and start <= e["occurred_at"] < end:
            events.append({"affects": "net_revenue", **e})
    counts = {"mrr": 0, "net_revenue": 0}
    for e in events:
        counts[e["affects"]] += 1
    return counts, events


def _arrived_since(con, layout: DataLayout, at_close: int | None, config: RunConfig,
                   pinned: dict[str, int]) -> list[dict] | None:  # fmt: skip
    """Subscription and payment events up to the as-of day in the build's events version but not in
    ``at_close`` (None: that version is no longer readable)."""
    try:
        before = lake.dataset(layout, "events", at_close) if at_close is not None else None
    except Exception as exc:  # noqa: BLE001 - vacuumed past the retention: counts unknown, said so
        log.warning("events version %s of a close is not readable (%s): event counts left null", at_close, exc)
        return None
    empty = schemas.with_partition_column("events").empty_table()
    now = lake.dataset(layout, "events", pinned.get("events")) if "events" in pinned else None
    con.register("events_at_close", before if before is not None else empty)
    con.register("events_now", now if now is not None else empty)  # the version this build read
    try:
        return _select(con, """
            select event_id, event_type, customer_id, occurred_at, effective_at
            from events_now
            where event_date <= ? and event_type in (select unnest(?))
              and event_id not in (select event_id from events_at_close where event_date <= ?)
            order by occurred_at, event_id""",
                       [config.as_of, list(SUBSCRIPTION_EVENTS + PAYMENT_EVENTS), config.as_of])  # fmt: skip
    finally:
        con.unregister("events_at_close")
        con.unregister("events_now")
