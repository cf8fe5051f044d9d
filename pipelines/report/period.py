"""The report's closed-period figures (CONTRACT section 7) and the month's cash figures.

For a closed month: the row as reported at close (``mrr_monthly_reported``), who closed it, and
every restatement of it since that close. For an open month: the live row, with the restatement
adjustment in the first open month. For every month: gross revenue, tax, refunds and net revenue
by original currency and in the reporting currency (``fct_revenue_daily``), reconciled to the
customer-month totals that the metrics stage computed independently per customer.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal

import pyarrow as pa

CASH_SQL = """
    select currency,
           sum(gross_revenue) as gross_revenue, sum(tax) as tax, sum(refunds) as refunds,
           sum(net_revenue) as net_revenue,
           sum(gross_revenue_reporting) as gross_revenue_reporting, sum(tax_reporting) as tax_reporting,
           sum(refunds_reporting) as refunds_reporting, sum(net_revenue_reporting) as net_revenue_reporting
    from fct_revenue_daily
    where "date" >= ? and "date" < ?
    group by currency
    order by currency
"""

METRIC_ORDER = ("mrr", "active_customers", "new_mrr", "expansion_mrr", "reactivation_mrr", "contraction_mrr",
                "churned_mrr", "net_revenue")  # fmt: skip


@dataclass
class PeriodFigures:
    status: str = "open"  # closed | open (a warehouse without closed periods: open)
    close: dict | None = None  # the close in effect: acted_at, acted_by, note
    row: dict | None = None  # mrr_monthly_reported, with previous_reported_mrr
    restatements: list[dict] = field(default_factory=list)
    cash: list[dict] = field(default_factory=list)
    cash_total: dict = field(default_factory=dict)
    customer_months_net_revenue: Decimal | None = None
    frozen_cash: dict | None = None  # a closed month's cash figures as reported at close
    tables: dict[str, pa.Table] = field(default_factory=dict)

    @property
    def reconciled(self) -> bool:
        net = self.cash_total.get("net_revenue_reporting", Decimal(0))
        return self.customer_months_net_revenue is not None and net == self.customer_months_net_revenue


def arrow(con, sql: str, params: list) -> pa.Table:
    """A query's result as an Arrow table, without the extra copy of a DB-API cursor's result."""
    return con.sql(sql, params=params).to_arrow_table()


def _next_month(month: dt.date) -> dt.date:
    return dt.date(month.year + month.month // 12, month.month % 12 + 1, 1)


def _rows(con, sql: str, params=()) -> list[dict]:
    cur = con.execute(sql, params)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def _exportable(table: pa.Table) -> pa.Table:
    """Timestamps with a time zone as ISO text (UTC): spreadsheets have no time zones."""
    for i, column in enumerate(table.schema):
        if pa.types.is_timestamp(column.type) and column.type.tz is not None:
            values = pa.array([v.isoformat() if v is not None else None for v in table.column(i).to_pylist()],
                              pa.string())  # fmt: skip
            table = table.set_column(i, column.name, values)
    return table


def _has(con, table: str) -> bool:
    return bool(con.execute("select count(*) from information_schema.tables where table_name = ?",
                            [table]).fetchall()[0][0])  # fmt: skip


def read_period(con, month: dt.date) -> PeriodFigures:
    period = PeriodFigures()
    start, end = month, _next_month(month)
    period.cash = _rows(con, CASH_SQL, [start, end])
    keys = [k for k in (period.cash[0] if period.cash else {}) if k.endswith("_reporting")]
    period.cash_total = {k: sum((r[k] for r in period.cash), Decimal(0)) for k in keys} or {
        k: Decimal(0) for k in ("gross_revenue_reporting", "tax_reporting", "refunds_reporting",
                                "net_revenue_reporting")}  # fmt: skip
    period.customer_months_net_revenue = con.execute(
        'select coalesce(sum(net_revenue), 0) from stg_customer_months where "month" = ?', [month]).fetchall()[0][0]
    period.tables["cash"] = arrow(con, CASH_SQL, [start, end])
    if not _has(con, "mrr_monthly_reported"):
        return period
    rows = _rows(con, 'select * from (select *, lag(mrr, 1, 0) over (order by "month") as previous_reported_mrr '
                      'from mrr_monthly_reported) where "month" = ?', [month])  # fmt: skip
    period.row = rows[0] if rows else None
    if period.row is None:
        return period
    period.status = period.row["period_status"]
    period.tables["mrr_monthly_reported"] = _exportable(
        arrow(con, 'select * from mrr_monthly_reported where "month" = ?', [month]))
    if period.status == "closed":
        closed_at = period.row["closed_at"]
        period.close = _rows(con, "select acted_at, acted_by, note from period_closes where \"month\" = ? "
                                  "and action = 'close' and acted_at = ?", [month, closed_at])[0]  # fmt: skip
        frozen = _rows(con, 'select gross_revenue, tax, refunds, net_revenue from stg_closed_figures '
                            'where "month" = ? and closed_at = ?', [month, closed_at])  # fmt: skip
        period.frozen_cash = frozen[0] if frozen else None
        sql = ('select * from restatements where "month" = ? and close_acted_at = ? '
               'order by detected_at, run_id, metric')
        order = {m: i for i, m in enumerate(METRIC_ORDER)}
        period.restatements = sorted(_rows(con, sql, [month, closed_at]),
                                     key=lambda r: (r["detected_at"], r["run_id"], order.get(r["metric"], 99)))
        period.tables["restatements"] = _exportable(arrow(con, sql, [month, closed_at]))
    return period
