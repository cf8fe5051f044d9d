"""`revenue report`: the monthly finance report (self-contained HTML) plus the month's tables as CSV/XLSX.

    read_month (queries) -> render_charts (charts) -> render HTML + export_tables (export)

The HTML embeds plotly.js inline (no CDN, no external request) and carries every KPI's
exact value in a ``data-value`` attribute next to its text, formatted to the reporting
currency's minor unit (0 decimals for JPY, 2 for USD, 3 for KWD).
"""

from __future__ import annotations

import datetime as dt
import functools
import warnings
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import jinja2

from pipelines.config import RunConfig
from pipelines.report.charts import render_charts
from pipelines.report.export import export_tables, write_aside
from pipelines.report.queries import latest_ingest_counts, read_month
from transforms.money import format_money, format_quantity

warnings.filterwarnings("ignore", message="Arrow output on a DB-API result")
TEMPLATES = Path(__file__).resolve().parent / "templates"

KPIS = [
    # key (an mrr_monthly column), label, kind, meaning (shown in the report)
    ("mrr", "MRR", "money", "Monthly recurring revenue at the month's last instant"),
    ("arr", "ARR", "money", "MRR x 12"),
    ("net_new_mrr", "Net new MRR", "money", "new + expansion + reactivation - contraction - churned"),
    ("active_customers", "Active customers", "count", "Customers with MRR > 0 at month end"),
    ("customer_churn_rate", "Customer churn", "rate", "Churned customers / active customers at the previous month end"),
    ("gross_mrr_churn_rate", "Gross MRR churn", "rate", "(churned + contraction) / previous month's MRR"),
    ("net_mrr_churn_rate", "Net MRR churn", "rate", "(churned + contraction - expansion - reactivation) / previous MRR"),
    ("net_mrr_retention", "NRR", "rate", "1 - net MRR churn: MRR kept from last month's customers, expansion included"),
    ("arpa", "ARPA", "money", "MRR / active customers"),
    ("quick_ratio", "Quick ratio", "ratio", "(new + expansion + reactivation) / (churned + contraction)"),
    ("ltv", "Predicted LTV", "money", "ARPA / mean customer churn of the trailing 6 months"),
]
PERCENT = Decimal(100)


def format_kpi(value, kind: str, currency: str) -> str:
    if value is None:
        return "n/a"
    if kind == "money":
        return format_money(value, currency)
    if kind == "rate":
        return f"{Decimal(value) * PERCENT:.2f} %"
    if kind == "ratio":
        return f"{Decimal(value):.2f}"
    return f"{value:,}"


def prewarm() -> None:
    """Load what every report needs and no data decides: plotly's figure classes and their
    validators (~0.2 s on a first figure), xlsxwriter, the compiled page template. ``revenue run``
    calls it on a thread while it waits for its transform process, so its report starts warm."""
    import plotly.graph_objects as go
    import xlsxwriter  # noqa: F401

    for trace in (go.Waterfall(x=["a"], y=[0]), go.Scatter(x=["a"], y=[0]), go.Bar(x=["a"], y=[0]),
                  go.Heatmap(z=[[0]], x=[0], y=["a"])):  # fmt: skip
        go.Figure(trace).update_layout(title="warm", yaxis2={"overlaying": "y", "side": "right"})
    _environment().get_template("report.html.j2")


@functools.cache
def _environment() -> jinja2.Environment:
    """One Jinja environment per process: it caches the compiled template."""
    return jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)


def build_report(config: RunConfig, month: dt.date, run_id: str | None = None,
                 run_counts: dict | None = None) -> dict:  # fmt: skip
    """Write reports/<YYYY-MM>/report.html, its tables as CSV and one XLSX; return their paths and the KPIs.

    ``run_counts``: the ingest counts of the run that calls this (``revenue run``); else the newest recorded.
    """
    currency = config.reporting_currency
    figures = read_month(config, month)
    row = figures.row
    kpis = [{"key": k, "label": label, "value": None if row[k] is None else str(row[k]),
             "text": format_kpi(row[k], kind, currency), "meaning": meaning}
            for k, label, kind, meaning in KPIS]  # fmt: skip
    out_dir = config.layout.report_dir(month)
    out_dir.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="report-export") as pool:
        # the tables' files are written (mostly outside the GIL) while the page renders
        exported = pool.submit(export_tables, figures.tables, out_dir, f"revenue-{month:%Y-%m}.xlsx")
        counts = {"run_id": run_id, **run_counts} if run_counts else latest_ingest_counts(config)
        quality = config.layout.quality_latest
        page = _environment().get_template("report.html.j2").render(
            month=month, currency=currency, as_of=config.as_of, kpis=kpis, row=row,
            charts=render_charts(figures, currency), movers=figures.movers, usage=figures.usage,
            dead_by_reason=figures.dead_by_reason, counts=counts, run_id=run_id, lake_counts=figures.lake_counts,
            quality=_json(quality) if quality.exists() else None, period=figures.period,
            fmt=lambda v: format_money(v, currency) if v is not None else "n/a", qty=format_quantity,
            money=lambda v, code: format_money(v, code) if v is not None else "n/a",
        )  # fmt: skip
        exported.result()  # the page is written last: a report.html means its files are there
    html_path = write_aside(out_dir / "report.html", lambda p: p.write_text(page, encoding="utf-8"))
    return {"html": html_path, "dir": out_dir, "kpis": {k["key"]: k["value"] for k in kpis}}


def _json(path: Path) -> dict:
    import json

    return json.loads(path.read_text())
