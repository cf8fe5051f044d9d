"""The month's figures, read from the published warehouse (and the lake's dead-letter counts)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa

from pipelines import lake
from pipelines.config import RunConfig
from pipelines.report.period import PeriodFigures, arrow, read_period
from transforms.errors import ConfigError, InputError

# the month's rows of these tables are exported as CSV and XLSX
EXPORTS = {
    "mrr_monthly": 'select * from mrr_monthly where "month" = ?',
    "fct_mrr": 'select * from fct_mrr where "month" = ? order by customer_id',
    "fct_revenue_daily": "select * from fct_revenue_daily where cast(date_trunc('month', \"date\") as date) = ? "
                         "order by 1, 2",
    "fct_usage_monthly": 'select * from fct_usage_monthly where "month" = ? order by 1, 3',
}  # fmt: skip
MOVER_KINDS = ("expansion", "contraction", "churn")
TOP_MOVERS = 10
TREND_MONTHS = 12


@dataclass
class MonthFigures:
    month: dt.date
    row: dict
    trend: list[dict]
    movers: dict[str, list[dict]]
    cohorts: list[dict]
    usage: list[dict]
    tables: dict[str, pa.Table]
    dead_by_reason: list[tuple[str, int]] = field(default_factory=list)
    lake_counts: dict[str, int] = field(default_factory=dict)
    period: PeriodFigures | None = None  # closed-period status, restatements, cash (pipelines.report.period)


def _rows(con, sql: str, params=()) -> list[dict]:
    cur = con.execute(sql, params)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def _check_built_for(con, config: RunConfig) -> None:
    """The warehouse must have been built for the configured reporting currency and as-of date."""
    built = con.execute("select any_value(reporting_currency), max(as_of) from dim_customers").fetchone()
    currency, as_of = built
    if currency is not None and currency != config.reporting_currency:
        raise ConfigError(f"the warehouse is in {currency}, not {config.reporting_currency}: "
                          f"pass --reporting-currency {currency} or rebuild it")  # fmt: skip
    if as_of is not None and config.as_of is not None and as_of != config.as_of:
        raise ConfigError(f"the warehouse was built as of {as_of}, not {config.as_of}: "
                          f"pass --as-of {as_of} or rebuild it")  # fmt: skip


def read_month(config: RunConfig, month: dt.date) -> MonthFigures:
    warehouse = config.layout.warehouse
    if not warehouse.exists():
        raise InputError(f"no published warehouse at {warehouse}: run `revenue run` or `revenue transform` first")
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        _check_built_for(con, config)
        months = [r[0] for r in con.execute('select "month" from mrr_monthly order by 1').fetchall()]
        if month not in months:
            span = f"{months[0]:%Y-%m}..{months[-1]:%Y-%m}" if months else "none"
            raise InputError(f"month {month:%Y-%m} is not in the warehouse (months available: {span})")
        figures = MonthFigures(
            month=month,
            row=_rows(con, 'select * from mrr_monthly where "month" = ?', [month])[0],
            trend=_rows(con, 'select "month", mrr, net_new_mrr, active_customers from mrr_monthly '
                             f'where "month" > ? - interval {TREND_MONTHS} month and "month" <= ? order by 1',
                        [month, month]),
            movers={kind: _rows(con, 'select customer_id, previous_mrr, mrr, mrr_change from fct_mrr '
                                     'where "month" = ? and movement = ? '
                                     f'order by abs(mrr_change) desc, customer_id limit {TOP_MOVERS}', [month, kind])
                    for kind in MOVER_KINDS},
            cohorts=_rows(con, 'select cohort_month, months_since_start, logo_retention, customers '
                               f'from fct_cohort_retention where cohort_month > ? - interval {TREND_MONTHS} month '
                               'and cohort_month <= ? and cohort_month + to_months(months_since_start) <= ? '
                               'order by 1, 2', [month, month, month]),
            usage=_rows(con, 'select meter, sum(quantity) as quantity, sum(usage_revenue) as usage_revenue '
                             'from fct_usage_monthly where "month" = ? group by 1 order by 1', [month]),
            tables={name: arrow(con, sql, [month]) for name, sql in EXPORTS.items()},
        )  # fmt: skip
        figures.period = read_period(con, month)
        figures.tables.update(figures.period.tables)
        if figures.period.row is not None:  # a closed month: the figures as reported at close
            figures.row = figures.period.row
    finally:
        con.close()
    layout = config.layout
    figures.dead_by_reason = sorted(lake.counts_by(lake.read_table(layout, "dead_letter", ["reason"]), "reason").items())
    figures.lake_counts = {t: lake.row_count(layout, t) for t in ("events", "usage")}  # from the log: no data read
    return figures


def latest_ingest_counts(config: RunConfig) -> dict | None:
    """The four counts of the newest ingest, whether it ran alone or inside ``revenue run``."""
    layout = config.layout
    candidates = []
    for command, key in (("run", "ingest"), ("ingest", "counts")):
        doc = layout.latest_manifest(command)
        if doc and doc.get(key):
            candidates.append((doc["run_id"], {"run_id": doc["run_id"], **doc[key]}))
    return max(candidates, key=lambda c: c[0])[1] if candidates else None
