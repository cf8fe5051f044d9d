"""The report's charts (plotly, drawn offline; plotly.js is inlined once, in the first chart).

Plotly renders a subset of HTML inside labels (links included), so every label that comes
from the data (meter names, months) is HTML-escaped first: it is shown, never interpreted.
Decimal values go to plotly as they are; its JSON encoder writes them as numbers for drawing only.
"""

from __future__ import annotations

import html

from pipelines.report.queries import MonthFigures

CHART_CONFIG = {"displayModeBar": False}


def _label(value) -> str:
    return html.escape(str(value), quote=True)


def _bridge(f: MonthFigures, currency: str):
    import plotly.graph_objects as go

    r = f.row
    # the reported view (closed periods): start from last month as reported, plus its restatement adjustment
    start, adjustment = r.get("previous_reported_mrr", r["previous_mrr"]), r.get("restatement_adjustment_mrr") or 0
    fig = go.Figure(go.Waterfall(
        x=["Start MRR", "Restatement adjustment", "New", "Expansion", "Reactivation", "Contraction", "Churn",
           "End MRR"],
        measure=["absolute", "relative", "relative", "relative", "relative", "relative", "relative", "total"],
        y=[start, adjustment, r["new_mrr"], r["expansion_mrr"], r["reactivation_mrr"],
           -r["contraction_mrr"], -r["churned_mrr"], r["mrr"]],
    ))  # fmt: skip
    fig.update_layout(title=f"MRR bridge, {f.month:%B %Y} ({currency})", height=380, margin={"t": 50})
    return fig


def _trend(f: MonthFigures):
    import plotly.graph_objects as go

    months = [_label(r["month"]) for r in f.trend]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=months, y=[r["mrr"] for r in f.trend], name="MRR"))
    fig.add_trace(go.Bar(x=months, y=[r["net_new_mrr"] for r in f.trend], name="Net new MRR", yaxis="y2"))
    fig.update_layout(title="12-month trend", height=380, yaxis2={"overlaying": "y", "side": "right"},
                      margin={"t": 50})  # fmt: skip
    return fig


def _cohorts(f: MonthFigures):
    import plotly.graph_objects as go

    cohort_months = sorted({r["cohort_month"] for r in f.cohorts})
    max_k = max((r["months_since_start"] for r in f.cohorts), default=0)
    grid = [[None] * (max_k + 1) for _ in cohort_months]
    for r in f.cohorts:
        grid[cohort_months.index(r["cohort_month"])][r["months_since_start"]] = r["logo_retention"]
    fig = go.Figure(go.Heatmap(z=grid, x=list(range(max_k + 1)), y=[f"{m:%Y-%m}" for m in cohort_months],
                               colorscale="Blues", zmin=0, zmax=1))  # fmt: skip
    fig.update_layout(title="Cohort logo retention (months since first paid month)", height=420, margin={"t": 50})
    return fig


def _usage(f: MonthFigures, currency: str):
    import plotly.graph_objects as go

    fig = go.Figure(go.Bar(x=[_label(r["meter"]) for r in f.usage], y=[r["usage_revenue"] or 0 for r in f.usage]))
    fig.update_layout(title=f"Usage revenue by meter ({currency})", height=320, margin={"t": 50})
    return fig


def render_charts(f: MonthFigures, currency: str) -> dict[str, str]:
    """HTML fragments, keyed by the template's chart names."""
    figures = {"bridge": _bridge(f, currency), "trend": _trend(f), "cohorts": _cohorts(f), "usage": _usage(f, currency)}
    return {name: fig.to_html(full_html=False, include_plotlyjs=(i == 0), config=CHART_CONFIG)
            for i, (name, fig) in enumerate(figures.items())}  # fmt: skip
