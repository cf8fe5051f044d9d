"""`revenue run`: ingest -> metrics -> dbt build -> quality gate -> publish -> report, with one manifest.

The manifest is written whatever happens (status ``success``, ``quality_gate_failed`` or
``error``); then a failure is raised again for the CLI's boundary to turn into an exit status.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from pipelines.child import PreparedChild, release_memory
from pipelines.config import RunConfig
from pipelines.manifest import new_run_id, write_manifest
from pipelines.summary import console
from transforms.errors import QualityGateFailed, RevenueError


@dataclass
class RunResult:
    run_id: str
    status: str
    manifest: Path | None = None
    summary: dict = field(default_factory=dict)


def _peak_rss_mb(children: bool = False) -> int:
    """The peak resident memory so far, in MB: of this process, read after each stage (the stage after
    which it grew set the new peak), or of the largest child process waited for (dbt's build, the
    transform process).

    Linux keeps ``ru_maxrss`` across ``exec``: a process started by fork and exec (a spawned stage)
    reports at least the size of its parent when it forked. Its own figure is ``VmHWM``, the
    high-water mark of its address space, which starts again at exec."""
    import resource

    if not children:
        try:
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return round(int(line.split()[1]) / 1024)
        except OSError:  # not Linux
            pass
    return round(resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF).ru_maxrss / 1024)


def transform_stage(config: RunConfig, run_id: str, pinned: dict[str, int]):
    """The run's dbt build, quality gate and publish; ``run_all`` runs it in a fresh process (its peak
    memory is then its own, not added to what the ingest and metrics stages left in the run's).

    Returns ``(TransformResult or the RevenueError that stopped it, the gate's results to show,
    this process's peak RSS in MB)``: the gate's results are shown by the parent, failed or not."""
    from pipelines.quality import warehouse_gate
    from pipelines.transform import run_transform

    gates: list = []
    gate = warehouse_gate(config, run_id=run_id, on_result=gates.append)
    try:
        outcome = run_transform(config, gate=gate, run_id=run_id, write_run_manifest=False, pinned=pinned)
    except RevenueError as exc:
        outcome = exc
    return outcome, gates, _peak_rss_mb()


# a run whose input holds at most this much JSON starts its transform process (and dbt) at its start, so
# their imports (about 5 s of one core) load beside the ingest and metrics stages instead of after them;
# a bigger run starts it when its turn comes: then its memory is not added to the ingest's peak, and
# a few seconds are nothing beside the run
WARM_START_MAX_BYTES = 64 << 20
WARM_NICENESS = 10


def _warm_transform() -> None:
    """In a transform process started early: its stage's imports and a dbt waiting for the build, at a
    lower scheduling priority (inherited by dbt) so that they take the cores the ingest leaves idle,
    not the ingest's: the run process waits while the transform works, so nothing competes then."""
    os.nice(WARM_NICENESS)
    from pipelines import quality, transform

    transform.prewarm_dbt()
    quality.prewarm().join()


def _prepare_transform(config: RunConfig) -> None:
    """In the transform process, while the metrics run: its build's set-up (``transform.prepare_ahead``)."""
    from pipelines.transform import prepare_ahead

    prepare_ahead(config)


def _input_bytes(config: RunConfig) -> int | None:
    """The JSON the run will read (``pipelines.config.input_json_bytes``), None if unknown (the
    ingest then reports why)."""
    from pipelines.config import discover_input, input_json_bytes

    if config.input_dir is None:
        return None
    try:
        return input_json_bytes(discover_input(config.input_dir))
    except (RevenueError, OSError):  # the ingest reports it (an unreadable file is a dead letter there)
        return None


def run_all(config: RunConfig, show_progress: bool = True, on_gate=None,
            on_finish: Callable[[RunResult], None] | None = None) -> RunResult:  # fmt: skip
    """Run every stage with ``config``; ``on_finish(result)`` sees the result (failed or not) before a raise."""
    size = _input_bytes(config)
    warm = size is not None and size <= WARM_START_MAX_BYTES
    # started before this process imports its stages (Beam, ~1.5 s of one core): its own imports take
    # the other core meanwhile
    transform_process = PreparedChild("transform", warm=_warm_transform) if warm else None
    from pipelines.ingest import run_ingest
    from pipelines.metrics import run_metrics
    from pipelines.report import build_report
    from pipelines.report import prewarm as prewarm_report

    run_id = new_run_id()
    config = config.with_pii()  # paths in the manifest are redacted with the run's key
    layout = config.layout
    result = RunResult(run_id, "running")
    timings: dict[str, float] = {}
    peaks: dict[str, int] = {}  # this process's peak resident memory after each stage (dbt apart)
    summary = result.summary
    summary.update(run_id=run_id, config=config.describe())
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                        disable=not show_progress, transient=False)  # fmt: skip

    def stage(name: str, description: str, fn):
        task = progress.add_task(description, total=1)
        started = time.monotonic()
        try:
            return fn()
        finally:
            peaks[name] = _peak_rss_mb()
            release_memory()  # the next stage starts from what the process needs, not this one's peak
            timings[name] = round(time.monotonic() - started, 3)
            progress.update(task, completed=1, description=f"{description} [dim]({timings[name]:.1f}s)[/dim]")

    failure: RevenueError | None = None
    summary["transform_started"] = "with the run" if warm else "after the metrics"

    def transform_call():
        nonlocal transform_process
        transform_process = transform_process or PreparedChild("transform")
        # this process waits for the transform's answer: the report's imports load meanwhile
        threading.Thread(target=prewarm_report, name="report-prewarm", daemon=True).start()
        # the report starts while the transform process shuts down; it is waited for before the manifest
        return transform_process.call(transform_stage, config, run_id, pinned, wait=False)

    try:
        with progress:
            ingest = stage("ingest", "ingest: parse, validate, deduplicate into the lake",
                           lambda: run_ingest(config, run_id=run_id, write_run_manifest=False))
            summary["ingest"] = ingest.counts()
            summary["input_files"] = ingest.files
            config = config.resolve_as_of()  # once, after the ingest: every later stage uses this date
            summary["config"] = config.describe()
            if transform_process is not None:  # the build's set-up and dbt's parse, beside the metrics
                transform_process.hint(_prepare_transform, config)
            metrics = stage("metrics", "metrics: calendar-month windows into customer_months",
                            lambda: run_metrics(config, run_id=run_id, write_run_manifest=False))
            summary.update(as_of=config.as_of.isoformat(), reporting_currency=config.reporting_currency,
                           months_covered=metrics.months, customers=metrics.customers,
                           mrr_at_as_of=str(metrics.mrr_at_as_of),  # exact Decimal as text
                           paying_customers_at_as_of=metrics.active_customers_at_as_of)  # fmt: skip
            summary["metrics"] = {"mode": metrics.mode, "reason": metrics.reason,
                                  "customers_recomputed": metrics.customers_recomputed,
                                  "rows_read": metrics.rows_read, "months_rewritten": metrics.months_rewritten}  # fmt: skip
            pinned = {**ingest.lake_versions, **metrics.lake_versions}
            transform, gates, peaks["transform_process"] = stage(
                "transform", "dbt build, quality gate, atomic publish", transform_call)
            for gate_result in gates:
                if on_gate is not None:
                    on_gate(gate_result)
            if isinstance(transform, RevenueError):  # the gate failed, or the build: raised after it was shown
                raise transform
            timings["dbt_build"] = transform.dbt_seconds
            # where the stage's time went; "process" is the rest: handing the call to the transform
            # process (and that process's imports, when they had not finished loading beside the metrics)
            summary["transform_prepared_ahead"] = transform.prepared_ahead
            summary["transform_steps"] = {**transform.steps,
                                          "process": round(timings["transform"] - transform.seconds, 3)}  # fmt: skip
            summary["quality"] = {"passed": transform.gate["passed"], "docs": transform.gate["docs"]}
            summary["dbt_nodes"] = transform.nodes
            summary["lake_versions"] = transform.lake_versions  # the version of each table this run published
            summary["warehouse_load"] = transform.lake_load  # full or incremental, why, and what changed
            summary["restatements"] = transform.restatements  # closed months this run restated
            month = dt.date(config.as_of.year, config.as_of.month, 1)
            report = stage("report", f"report: {month:%Y-%m} finance report",
                           lambda: build_report(config, month, run_id, run_counts=ingest.counts()))
            summary["outputs"] = {"lake": str(layout.lake), "warehouse": str(transform.published),
                                  "report": str(Path(report["html"]).absolute()),
                                  "report_dir": str(Path(report["dir"]).absolute()),
                                  "quality": str(layout.quality_dir)}  # fmt: skip
        result.status = "success"
    except QualityGateFailed as exc:
        result.status, failure = "quality_gate_failed", exc
    except RevenueError as exc:
        result.status, failure = "error", exc
    except BaseException as exc:  # a bug or an interrupt: still record the run, then let it propagate
        if transform_process is not None:
            transform_process.close()
        summary.update(status="crashed", error=f"{type(exc).__name__}: {exc}", timings=timings,
                       peak_rss_mb={**peaks, "children": _peak_rss_mb(children=True)})
        write_manifest(layout, run_id, "run", summary)
        raise
    finally:
        if transform_process is not None:  # a run stopped before its transform: the waiting process ends;
            transform_process.close()  # else it has answered: wait for it to exit (its peak is in "children")
    summary.update(status=result.status, error=str(failure) if failure else None, timings=timings,
                   peak_rss_mb={**peaks, "children": _peak_rss_mb(children=True)})
    result.manifest = write_manifest(layout, run_id, "run", summary)
    if on_finish is not None:
        on_finish(result)
    if failure is not None:
        raise failure
    return result
