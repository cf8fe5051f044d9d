"""`revenue run`: ingest -> metrics -> dbt build -> quality gate -> publish -> report, with one manifest."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from pipelines.errors import QualityGateFailed, RevenueError
from pipelines.ingest import new_run_id, run_ingest
from pipelines.manifest import write_manifest
from pipelines.summary import console


@dataclass
class RunResult:
    run_id: str
    status: str
    exit_code: int
    manifest: Path
    summary: dict = field(default_factory=dict)


def run_all(input_dir: Path, data_dir: Path, as_of: dt.date | None = None, reporting_currency: str = "USD",
            fx_rates: Path | None = None, beam_args: list[str] = (), show_progress: bool = True) -> RunResult:  # fmt: skip
    from pipelines.metrics import run_metrics
    from pipelines.quality import warehouse_gate
    from pipelines.report import build_report
    from pipelines.transform import run_transform

    run_id = new_run_id()
    data_dir = Path(data_dir)
    timings: dict[str, float] = {}
    summary: dict = {"run_id": run_id, "input": str(Path(input_dir).absolute()), "data_dir": str(data_dir.absolute()),
                     "reporting_currency": reporting_currency.upper(), "beam_args": list(beam_args),
                     "fx_rates": str(fx_rates) if fx_rates else "bundled"}  # fmt: skip
    status, exit_code, error = "success", 0, None

    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                        disable=not show_progress, transient=False)  # fmt: skip

    def stage(name: str, description: str, fn):
        task = progress.add_task(description, total=1)
        started = time.monotonic()
        try:
            return fn()
        finally:
            timings[name] = round(time.monotonic() - started, 3)
            progress.update(task, completed=1, description=f"{description} [dim]({timings[name]:.1f}s)[/dim]")

    try:
        with progress:
            ingest = stage("ingest", "ingest: parse, validate, deduplicate into the lake",
                           lambda: run_ingest(input_dir, data_dir, beam_args, run_id=run_id, write_run_manifest=False))
            summary["ingest"] = ingest.counts()
            summary["input_files"] = ingest.files
            metrics = stage("metrics", "metrics: calendar-month windows into customer_months",
                            lambda: run_metrics(data_dir, as_of, reporting_currency, fx_rates, beam_args,
                                                run_id=run_id, write_run_manifest=False))  # fmt: skip
            summary["as_of"] = metrics.as_of.isoformat()
            summary["months_covered"] = metrics.months
            summary["customers"] = metrics.customers
            summary["mrr_at_as_of"] = str(metrics.mrr_at_as_of)  # exact Decimal as text
            summary["paying_customers_at_as_of"] = metrics.active_customers_at_as_of
            transform = stage("transform", "dbt build, quality gate, atomic publish",
                              lambda: run_transform(data_dir, fx_rates, gate=warehouse_gate(data_dir, run_id=run_id),
                                                    run_id=run_id, write_run_manifest=False))  # fmt: skip
            timings["dbt_build"] = transform.dbt_seconds
            summary["quality"] = {"passed": transform.gate["passed"], "docs": transform.gate["docs"]}
            summary["dbt_nodes"] = transform.nodes
            month = dt.date(metrics.as_of.year, metrics.as_of.month, 1)
            report = stage("report", f"report: {month:%Y-%m} finance report",
                           lambda: build_report(data_dir, month, run_id))
            summary["outputs"] = {"lake": str((data_dir / "lake").absolute()), "warehouse": str(transform.published),
                                  "report": str(Path(report["html"]).absolute()),
                                  "report_dir": str(Path(report["dir"]).absolute()),
                                  "quality": str((data_dir / "quality").absolute())}  # fmt: skip
    except QualityGateFailed as exc:
        status, exit_code, error = "quality_gate_failed", 2, str(exc)
    except RevenueError as exc:
        status, exit_code, error = "error", exc.exit_code, str(exc)
    summary.update(status=status, error=error, timings=timings)
    manifest = write_manifest(data_dir, run_id, "run", summary)
    return RunResult(run_id, status, exit_code, manifest, summary)
