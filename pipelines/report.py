"""`revenue report`: the monthly finance report (self-contained HTML) plus the month's tables as CSV/XLSX.

The HTML embeds plotly.js inline (no CDN, no external request) and carries every KPI's
exact value in a ``data-value`` attribute next to its formatted text.
"""

from __future__ import annotations

import datetime as dt
import json
import warnings
from decimal import Decimal
from pathlib import Path

import duckdb
import jinja2

from pipelines.errors import InputError
from pipelines.transform import warehouse_path

warnings.filterwarnings("ignore", message="Arrow output on a DB-API result")
TEMPLATES = Path(__file__).resolve().parent / "templates"

KPIS = [
    # key, label, kind, meaning (shown in the report)
    ("mrr", "MRR", "money", "Monthly recurring revenue at the month's last instant"),
    ("arr", "ARR", "money", "MRR x 12"),
    ("net_new_mrr", "Net new MRR", "money", "new + expansion + reactivation - contraction - churned"),
    ("active_customers", "Active customers", "count", "Customers with MRR > 0 at month end"),
    ("customer_churn_rate", "Customer churn", "rate", "Churned customers / active customers at the previous month end"),
    ("gross_mrr_churn_rate", "Gross MRR churn", "rate", "(churned + contraction) / previous month's MRR"),
    ("net_mrr_churn_rate", "Net MRR churn", "rate", "(churned + contraction - expansion - reactivation) / previous MRR"),
    ("nrr", "NRR", "rate", "1 - net MRR churn: MRR kept from last month's customers, expansion included"),
    ("arpa", "ARPA", "money", "MRR / active customers"),
    ("quick_ratio", "Quick ratio", "ratio", "(new + expansion + reactivation) / (churned + contraction)"),
    ("ltv", "Predicted LTV", "money", "ARPA / mean customer churn of the trailing 6 months"),
]


def parse_month(value: str) -> dt.date:
    try:
        year, month = (int(x) for x in value.split("-"))
        return dt.date(year, month, 1)
    except ValueError:
        raise InputError(f"--month must be YYYY-MM, got {value!r}") from None


def _fmt(value, kind: str, currency: str) -> str:
    if value is None:
        return "n/a"
    if kind == "money":
        return f"{Decimal(value):,.2f} {currency}"
    if kind == "rate":
        return f"{Decimal(value) * 100:.2f} %"
    if kind == "ratio":
        return f"{Decimal(value):.2f}"
    return f"{value:,}"


def _rows(con, sql: str, params=()) -> list[dict]:
    cur = con.execute(sql, params)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def _latest_manifest(data_dir: Path, command: str) -> dict | None:
    runs = sorted((data_dir / "runs").glob(f"*-{command}.json")) if (data_dir / "runs").is_dir() else []
    return json.loads(runs[-1].read_text()) if runs else None


def build_report(data_dir: Path, month: dt.date, run_id: str | None = None) -> dict:
    """Write reports/<YYYY-MM>/report.html, tables as CSV and one XLSX; return their paths and the KPIs."""
    import pandas as pd
    import plotly.graph_objects as go

    data_dir = Path(data_dir)
    warehouse = warehouse_path(data_dir)
    if not warehouse.exists():
        raise InputError(f"no published warehouse at {warehouse}: run `revenue run` or `revenue transform` first")
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        months = [r[0] for r in con.execute('select "month" from mrr_monthly order by 1').fetchall()]
        if month not in months:
            span = f"{months[0]:%Y-%m}..{months[-1]:%Y-%m}" if months else "none"
            raise InputError(f"month {month:%Y-%m} is not in the warehouse (months available: {span})")
        row = _rows(con, 'select * from mrr_monthly where "month" = ?', [month])[0]
        currency = con.execute("select any_value(reporting_currency) from fct_mrr").fetchone()[0] or "USD"
        as_of = con.execute("select max(as_of) from dim_customers").fetchone()[0]
        row["nrr"] = (Decimal(1) - row["net_mrr_churn_rate"]) if row["net_mrr_churn_rate"] is not None else None
        kpis = [{"key": k, "label": label, "value": None if row[k] is None else str(row[k]),
                 "text": _fmt(row[k], kind, currency), "meaning": meaning} for k, label, kind, meaning in KPIS]  # fmt: skip
        trend = _rows(con, 'select "month", mrr, net_new_mrr, active_customers from mrr_monthly '
                           'where "month" > ? - interval 12 month and "month" <= ? order by 1', [month, month])  # fmt: skip
        movers = {
            kind: _rows(con, 'select customer_id, previous_mrr, mrr, mrr_change from fct_mrr where "month" = ? '
                             "and movement = ? order by abs(mrr_change) desc, customer_id limit 10", [month, kind])
            for kind in ("expansion", "contraction", "churn")
        }  # fmt: skip
        cohorts = _rows(con, 'select cohort_month, months_since_start, logo_retention, customers '
                             'from fct_cohort_retention where cohort_month > ? - interval 12 month '
                             'and cohort_month <= ? and cohort_month + to_months(months_since_start) <= ? '
                             'order by 1, 2', [month, month, month])  # fmt: skip
        usage = _rows(con, 'select meter, sum(quantity) as quantity, sum(usage_revenue) as usage_revenue '
                           'from fct_usage_monthly where "month" = ? group by 1 order by 1', [month])  # fmt: skip
        tables = {
            "mrr_monthly": con.execute('select * from mrr_monthly where "month" = ?', [month]).to_arrow_table(),
            "fct_mrr": con.execute('select * from fct_mrr where "month" = ? order by customer_id', [month]).to_arrow_table(),
            "fct_revenue_daily": con.execute('select * from fct_revenue_daily where cast(date_trunc(\'month\', "date")'
                                             ' as date) = ? order by 1, 2', [month]).to_arrow_table(),
            "fct_usage_monthly": con.execute('select * from fct_usage_monthly where "month" = ? order by 1, 3',
                                             [month]).to_arrow_table(),
        }  # fmt: skip
        dead_by_reason = []
    finally:
        con.close()

    out_dir = data_dir / "reports" / f"{month:%Y-%m}"
    out_dir.mkdir(parents=True, exist_ok=True)
    frames = {}
    for name, table in tables.items():
        if hasattr(table, "read_all"):
            table = table.read_all()
        frames[name] = table.to_pandas()  # DECIMAL -> Decimal objects: exact in CSV and XLSX
        frames[name].to_csv(out_dir / f"{name}.csv", index=False)
    with pd.ExcelWriter(out_dir / f"revenue-{month:%Y-%m}.xlsx", engine="openpyxl") as writer:
        for name, frame in frames.items():
            frame.to_excel(writer, sheet_name=name[:31], index=False)

    # charts: Decimal values go to plotly as they are; its JSON encoder writes them as numbers for drawing only
    bridge = go.Figure(go.Waterfall(
        x=["Start MRR", "New", "Expansion", "Reactivation", "Contraction", "Churn", "End MRR"],
        measure=["absolute", "relative", "relative", "relative", "relative", "relative", "total"],
        y=[row["previous_mrr"], row["new_mrr"], row["expansion_mrr"], row["reactivation_mrr"],
           -row["contraction_mrr"], -row["churned_mrr"], row["mrr"]],
    ))  # fmt: skip
    bridge.update_layout(title=f"MRR bridge, {month:%B %Y} ({currency})", height=380, margin={"t": 50})
    trend_fig = go.Figure()
    trend_fig.add_trace(go.Scatter(x=[str(r["month"]) for r in trend], y=[r["mrr"] for r in trend], name="MRR"))
    trend_fig.add_trace(go.Bar(x=[str(r["month"]) for r in trend], y=[r["net_new_mrr"] for r in trend],
                               name="Net new MRR", yaxis="y2"))  # fmt: skip
    trend_fig.update_layout(title="12-month trend", height=380, yaxis2={"overlaying": "y", "side": "right"},
                            margin={"t": 50})  # fmt: skip
    cohort_months = sorted({r["cohort_month"] for r in cohorts})
    max_k = max((r["months_since_start"] for r in cohorts), default=0)
    grid = [[None] * (max_k + 1) for _ in cohort_months]
    for r in cohorts:
        grid[cohort_months.index(r["cohort_month"])][r["months_since_start"]] = (
            r["logo_retention"])
    heat = go.Figure(go.Heatmap(z=grid, x=list(range(max_k + 1)), y=[f"{m:%Y-%m}" for m in cohort_months],
                                colorscale="Blues", zmin=0, zmax=1))  # fmt: skip
    heat.update_layout(title="Cohort logo retention (months since first paid month)", height=420, margin={"t": 50})
    usage_fig = go.Figure(go.Bar(x=[r["meter"] for r in usage],
                                 y=[r["usage_revenue"] or 0 for r in usage]))  # fmt: skip
    usage_fig.update_layout(title=f"Usage revenue by meter ({currency})", height=320, margin={"t": 50})
    charts = {
        "bridge": bridge.to_html(full_html=False, include_plotlyjs=True, config={"displayModeBar": False}),
        "trend": trend_fig.to_html(full_html=False, include_plotlyjs=False, config={"displayModeBar": False}),
        "cohorts": heat.to_html(full_html=False, include_plotlyjs=False, config={"displayModeBar": False}),
        "usage": usage_fig.to_html(full_html=False, include_plotlyjs=False, config={"displayModeBar": False}),
    }

    from pipelines import lake

    if lake.has_files(data_dir, "dead_letter"):
        dead = lake.read_table(data_dir, "dead_letter", ["reason"])
        dead_by_reason = sorted(lake.counts_by(dead, "reason").items())
    ingest = _latest_manifest(data_dir, "ingest")
    quality = json.loads((data_dir / "quality" / "latest.json").read_text()) \
        if (data_dir / "quality" / "latest.json").exists() else None  # fmt: skip
    lake_counts = {t: (lake.read_table(data_dir, t, ["event_id"]).num_rows if lake.has_files(data_dir, t) else 0)
                   for t in ("events", "usage")}  # fmt: skip
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)
    html = env.get_template("report.html.j2").render(
        month=month, currency=currency, as_of=as_of, kpis=kpis, row=row, charts=charts, movers=movers,
        usage=usage, dead_by_reason=dead_by_reason, ingest=ingest, quality=quality, run_id=run_id,
        lake_counts=lake_counts, fmt=lambda v: _fmt(v, "money", currency),
    )  # fmt: skip
    (out_dir / "report.html").write_text(html, encoding="utf-8")
    return {"html": out_dir / "report.html", "dir": out_dir, "kpis": {k["key"]: k["value"] for k in kpis}}
