"""`revenue transform`: dbt build into a fresh warehouse copy, gate it, publish it atomically.

The published file ``DATA_DIR/warehouse/revenue.duckdb`` is only ever replaced by
``os.replace`` of a fully built, tested (and, when a gate is given, validated) file.
Readers that hold the old file open keep reading the old version; they never block
the build and never see a half-built warehouse. A failed build or gate leaves the
published file byte-for-byte untouched.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import lake
from pipelines.errors import BuildFailed, ConfigError, InputError
from pipelines.ingest import new_run_id
from pipelines.manifest import write_manifest
from transforms import schemas
from transforms.fx import FxError, load_fx
from transforms.money import UnknownCurrency, currency_exponent

log = logging.getLogger(__name__)

PROJECT_DIR = Path(__file__).resolve().parent.parent / "dbt_project"
WAREHOUSE_NAME = "revenue.duckdb"
LAKE_SOURCES = ("events", "usage", "dead_letter", "customer_months", "customer_lifetime")
CONTRACT_TABLES = ("fct_mrr", "mrr_monthly", "dim_customers", "fct_revenue_daily", "fct_usage_monthly",
                   "fct_cohort_retention")  # fmt: skip


@dataclass
class TransformResult:
    run_id: str
    published: Path
    as_of: dt.date
    reporting_currency: str
    dbt_seconds: float
    seconds: float
    nodes: dict = field(default_factory=dict)
    gate: dict | None = None


def warehouse_path(data_dir: Path) -> Path:
    return Path(data_dir) / "warehouse" / WAREHOUSE_NAME


def lake_as_of(data_dir: Path) -> tuple[dt.date, str]:
    """As-of date and reporting currency of the metrics stage's latest output."""
    root = lake.lake_dir(data_dir) / "customer_lifetime"
    parts = sorted(p.name.split("=", 1)[1] for p in root.glob("as_of=*")) if root.is_dir() else []
    if not parts:
        raise InputError(f"no customer_lifetime in {lake.lake_dir(data_dir)}: run `revenue metrics` first")
    files = sorted((root / f"as_of={parts[-1]}").glob("*.parquet"))
    currency = pq.read_table(files[0], columns=["reporting_currency"])["reporting_currency"][0].as_py()
    return dt.date.fromisoformat(parts[-1]), currency


def _source_location(data_dir: Path, table: str, empty_dir: Path) -> str:
    if lake.has_files(data_dir, table):
        return "'" + lake.table_glob(data_dir, table).replace("'", "''") + "'"
    # dbt's read_parquet needs a file: an empty one with the table's columns stands in
    schema = {"events": schemas.EVENTS, "usage": schemas.USAGE, "dead_letter": schemas.DEAD_LETTER,
              "customer_months": schemas.CUSTOMER_MONTHS, "customer_lifetime": schemas.CUSTOMER_LIFETIME}[table]  # fmt: skip
    name, kind = schemas.PARTITION_COLUMNS[table]
    if name not in schema.names:
        schema = schema.append(pa.field(name, kind))
    path = empty_dir / f"{table}.parquet"
    empty_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(schema.empty_table(), path)
    return "'" + str(path).replace("'", "''") + "'"


def _write_fx_seed(project: Path, reporting_currency: str, fx_rates: Path | None) -> None:
    fx = load_fx(reporting_currency, fx_rates)
    with open(project / "seeds" / "fx_rates.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["date", "currency", "rate"])
        for day, currency, rate in fx.rows():
            writer.writerow([day.isoformat(), currency, format(rate, "f")])


def dbt_executable() -> str:
    candidate = Path(sys.executable).parent / "dbt"
    return str(candidate) if candidate.exists() else "dbt"


def _failures(target: Path) -> list[str]:
    path = target / "run_results.json"
    if not path.exists():
        return []
    results = json.loads(path.read_text())["results"]
    out = []
    for r in results:
        if r["status"] in ("error", "fail", "runtime error"):
            detail = (r.get("message") or "").splitlines()[0][:300] if r.get("message") else r["status"]
            out.append(f"{r['unique_id']} ({r['status']}: {detail})")
    return out


def run_transform(data_dir: Path, fx_rates: Path | None = None, gate: Callable[[Path], dict] | None = None,
                  run_id: str | None = None, write_run_manifest: bool = True) -> TransformResult:  # fmt: skip
    """Build, test, optionally gate, then publish. ``gate(build_file)`` raises QualityGateFailed to stop."""
    started = time.monotonic()
    data_dir = Path(data_dir).absolute()
    run_id = run_id or new_run_id()
    with lake.lake_lock(data_dir):
        lake.recover(data_dir)
        as_of, reporting_currency = lake_as_of(data_dir)
    try:
        exponent = currency_exponent(reporting_currency)
    except UnknownCurrency as exc:
        raise ConfigError(str(exc)) from None
    published = warehouse_path(data_dir)
    build_root = published.parent / f".build-{run_id}"
    project = build_root / "project"
    shutil.rmtree(build_root, ignore_errors=True)
    shutil.copytree(PROJECT_DIR, project, ignore=shutil.ignore_patterns("target", "logs", "*.duckdb*"))
    try:
        _write_fx_seed(project, reporting_currency, fx_rates)
    except FxError as exc:
        shutil.rmtree(build_root, ignore_errors=True)
        raise ConfigError(str(exc)) from None
    build_file = build_root / WAREHOUSE_NAME
    env = dict(os.environ)
    env.update({
        "DO_NOT_TRACK": "1", "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
        "REVENUE_WAREHOUSE_BUILD": str(build_file), "REVENUE_AS_OF": as_of.isoformat(),
        "REVENUE_REPORTING_CURRENCY": reporting_currency, "REVENUE_REPORTING_EXPONENT": str(exponent),
    })  # fmt: skip
    for table in LAKE_SOURCES:
        env[f"REVENUE_SRC_{table.upper()}"] = _source_location(data_dir, table, build_root / "empty")
    target = build_root / "target"
    cmd = [dbt_executable(), "build", "--project-dir", str(project), "--profiles-dir", str(project),
           "--target-path", str(target), "--log-path", str(build_root / "logs"), "--no-use-colors"]  # fmt: skip
    dbt_started = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    dbt_seconds = round(time.monotonic() - dbt_started, 3)
    if proc.returncode != 0:
        failures = _failures(target)
        (published.parent).mkdir(parents=True, exist_ok=True)
        log_copy = published.parent / f"dbt-build-failed-{run_id}.log"
        log_copy.write_text(proc.stdout + proc.stderr)
        shutil.rmtree(build_root, ignore_errors=True)
        what = "; ".join(failures[:5]) if failures else (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:]
        raise BuildFailed(f"dbt build failed, published warehouse left untouched: {what} (log: {log_copy})")
    nodes = _node_counts(target)
    gate_result = None
    try:
        if gate is not None:
            gate_result = gate(build_file)  # raises QualityGateFailed: nothing published
        published.parent.mkdir(parents=True, exist_ok=True)
        os.replace(build_file, published)
        lake.fsync_dir(published.parent)
    finally:
        shutil.rmtree(build_root, ignore_errors=True)
    result = TransformResult(run_id=run_id, published=published, as_of=as_of, reporting_currency=reporting_currency,
                             dbt_seconds=dbt_seconds, seconds=round(time.monotonic() - started, 3), nodes=nodes,
                             gate=gate_result)  # fmt: skip
    if write_run_manifest:
        write_manifest(data_dir, run_id, "transform", {
            "warehouse": str(published), "as_of": as_of.isoformat(), "reporting_currency": reporting_currency,
            "dbt_seconds": dbt_seconds, "seconds": result.seconds, "nodes": nodes,
        })  # fmt: skip
    return result


def _node_counts(target: Path) -> dict:
    path = target / "run_results.json"
    if not path.exists():
        return {}
    counts: dict[str, int] = {}
    for r in json.loads(path.read_text())["results"]:
        kind = r["unique_id"].split(".")[0]
        counts[f"{kind}:{r['status']}"] = counts.get(f"{kind}:{r['status']}", 0) + 1
    return dict(sorted(counts.items()))
