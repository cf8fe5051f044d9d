"""`revenue validate`: the Great Expectations gate over the lake and the warehouse.

Suites are committed JSON in ``expectations/suites/`` (GX 1.x format). Each suite
validates one pandas DataFrame that DuckDB builds from the lake or the warehouse
(GX's SQL path on DuckDB is broken, STACK.md). Money stays exact: frames carry
DECIMAL values as Python ``Decimal`` (via Arrow) or as exact booleans/integers
computed in DuckDB, never floats.

Each expectation has a severity: a failed ``critical`` one fails the gate (exit 2,
nothing published); a failed ``warning`` is reported. Results go to
``DATA_DIR/quality/``: ``results-<run_id>.json``, ``latest.json`` and Data Docs HTML
(``DATA_DIR/quality/gx/uncommitted/data_docs/local_site/index.html``).

dbt tests guard model logic (grain, keys, the MRR bridge, fct_mrr = mrr_monthly);
GX guards the lake's contract and certifies the finance tables.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from pipelines import lake
from pipelines.errors import InputError, QualityGateFailed
from pipelines.lake import write_atomic_bytes
from transforms.parse import REASONS

log = logging.getLogger(__name__)

SUITES_DIR = Path(__file__).resolve().parent.parent / "expectations" / "suites"
LAKE_SUITES = ("lake_events", "lake_usage", "lake_dead_letter", "lake_ingest_summary", "lake_customer_months")
WAREHOUSE_SUITES = ("warehouse_mrr_monthly", "warehouse_cohorts", "warehouse_mrr_before_first_paid_month",
                    "warehouse_revenue_reconciliation", "warehouse_usage_pricing")  # fmt: skip
DEFAULT_THRESHOLDS = {"dead_letter_ratio_warning": 0.01, "dead_letter_ratio_critical": 0.05}
OLDEST_ALLOWED = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


@dataclass
class SuiteOutcome:
    suite: str
    rows: int
    passed: bool
    critical_failures: list[dict] = field(default_factory=list)
    warnings: list[dict] = field(default_factory=list)


@dataclass
class GateResult:
    passed: bool
    suites: list[SuiteOutcome]
    seconds: float
    results_file: Path | None = None
    docs_index: Path | None = None

    def as_dict(self) -> dict:
        return {
            "passed": self.passed,
            "seconds": self.seconds,
            "docs": str(self.docs_index) if self.docs_index else None,
            "suites": [o.__dict__ for o in self.suites],
        }


def _frame(con: duckdb.DuckDBPyConnection, sql: str):
    """Query -> pandas with exact types: DECIMAL as Decimal objects, nullable integers as Int64."""
    import pandas as pd
    import pyarrow as pa

    table = con.sql(sql).arrow()
    if hasattr(table, "read_all"):
        table = table.read_all()
    ints = {pa.int8(), pa.int16(), pa.int32(), pa.int64()}
    return table.to_pandas(types_mapper=lambda t: pd.Int64Dtype() if t in ints else None)


def lake_frames(data_dir: Path, as_of: dt.date | None) -> dict[str, object]:
    """DataFrames the lake suites validate."""
    con = duckdb.connect()
    frames = {}

    def src(table):
        return f"read_parquet('{lake.table_glob(data_dir, table)}', hive_partitioning = true)"

    if lake.has_files(data_dir, "events"):
        frames["lake_events"] = _frame(con, f"select event_id, event_type, occurred_at, customer_id, currency, "
                                            f"amount, unit_amount, tax from {src('events')}")  # fmt: skip
    if lake.has_files(data_dir, "usage"):
        frames["lake_usage"] = _frame(con, f"select event_id, occurred_at, customer_id, meter, quantity "
                                           f"from {src('usage')}")  # fmt: skip
    dead = 0
    if lake.has_files(data_dir, "dead_letter"):
        frames["lake_dead_letter"] = _frame(con, f"select reason, message from {src('dead_letter')}")
        dead = len(frames["lake_dead_letter"])
    accepted = sum(len(frames[k]) for k in ("lake_events", "lake_usage") if k in frames)
    import pandas as pd

    ratio = dead / (accepted + dead) if accepted + dead else 0.0  # a ratio of counts, not money
    frames["lake_ingest_summary"] = pd.DataFrame({"dead_letter_ratio": [ratio], "dead_letters": [dead],
                                                  "accepted": [accepted]})  # fmt: skip
    if lake.has_files(data_dir, "customer_months"):
        frames["lake_customer_months"] = _frame(con, f"""
            select customer_id, "month", mrr, movement,
                   coalesce(datediff('month', lag("month") over (partition by customer_id order by "month"), "month"), 1)
                       as months_since_previous_row
            from {src('customer_months')}
        """)
    con.close()
    return frames


def warehouse_frames(warehouse: Path) -> dict[str, object]:
    """DataFrames the warehouse suites validate (read-only connection to a built warehouse)."""
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        return {
            "warehouse_mrr_monthly": _frame(con, """
                select "month", mrr, customer_churn_rate, gross_mrr_churn_rate,
                       coalesce(datediff('month', lag("month") over (order by "month"), "month"), 1)
                           as months_since_previous_row,
                       case when active_customers = 0 then arpa is null
                            else arpa * active_customers between mrr - 0.005 * active_customers
                                 and mrr + 0.005 * active_customers end as arpa_matches_mrr_over_customers
                from mrr_monthly
            """),
            "warehouse_cohorts": _frame(con, "select cohort_month, months_since_start, logo_retention, "
                                             "gross_mrr_retention from fct_cohort_retention"),  # fmt: skip
            "warehouse_mrr_before_first_paid_month": _frame(con, """
                select f.customer_id, f."month", f.mrr, d.first_paid_month
                from fct_mrr f join dim_customers d using (customer_id)
                where f.mrr > 0 and (d.first_paid_month is null or f."month" < d.first_paid_month)
            """),
            "warehouse_revenue_reconciliation": _frame(con, """
                with daily as (
                    select cast(date_trunc('month', "date") as date) as "month", sum(net_revenue_reporting) as net
                    from fct_revenue_daily group by 1
                ), facts as (
                    select "month", sum(net_revenue) as net from stg_customer_months group by 1
                )
                select coalesce(daily."month", facts."month") as "month", daily.net as daily_net,
                       facts.net as monthly_net, coalesce(daily.net, 0) = coalesce(facts.net, 0) as daily_equals_monthly
                from daily full outer join facts on daily."month" = facts."month"
            """),
            "warehouse_usage_pricing": _frame(con, "select customer_id, \"month\", meter, usage_revenue "
                                                   "from fct_usage_monthly"),  # fmt: skip
        }
    finally:
        con.close()


def _parameters(as_of: dt.date | None, thresholds: dict) -> dict:
    from iso4217 import Currency

    end = dt.datetime.combine((as_of or dt.date(9999, 12, 30)) + dt.timedelta(days=1), dt.time(), dt.UTC)
    return {
        "iso_currencies": sorted(c.code for c in Currency if c.exponent is not None),
        "reason_codes": list(REASONS),
        "oldest_allowed": OLDEST_ALLOWED,
        "as_of_end": end,
        **thresholds,
    }


def _load_suite(gx, name: str):
    doc = json.loads((SUITES_DIR / f"{name}.json").read_text())
    return gx.ExpectationSuite(name=doc["name"], expectations=doc["expectations"], meta=doc.get("meta"))


def validate(data_dir: Path, warehouse: Path | None = None, as_of: dt.date | None = None,
             thresholds: dict | None = None, suites: tuple[str, ...] | None = None, run_id: str | None = None,
             lake_checks: bool = True) -> GateResult:  # fmt: skip
    """Run the suites; write results and Data Docs under DATA_DIR/quality; never raises on failures."""
    started = time.monotonic()
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    data_dir = Path(data_dir).absolute()
    if as_of is None:  # the as-of date of the latest metrics run, when there is one
        from pipelines.transform import lake_as_of

        try:
            as_of = lake_as_of(data_dir)[0]
        except InputError:
            as_of = None
    frames = lake_frames(data_dir, as_of) if lake_checks else {}
    if warehouse is not None:
        frames.update(warehouse_frames(warehouse))
    if not frames:
        raise InputError(f"nothing to validate under {data_dir}: run `revenue ingest` first")
    wanted = [s for s in (suites or LAKE_SUITES + WAREHOUSE_SUITES) if s in frames]
    params = _parameters(as_of, {**DEFAULT_THRESHOLDS, **(thresholds or {})})

    import great_expectations as gx

    quality_dir = data_dir / "quality"
    quality_dir.mkdir(parents=True, exist_ok=True)
    context = gx.get_context(mode="file", project_root_dir=str(quality_dir))
    context.variables.progress_bars = {"globally": False, "metric_calculations": False}
    source = context.data_sources.add_or_update_pandas("revenue_frames")
    outcomes = []
    for name in wanted:
        suite = context.suites.add_or_update(_load_suite(gx, name))
        try:
            asset = source.get_asset(name)
        except LookupError:
            asset = source.add_dataframe_asset(name)
        try:
            batch_def = asset.get_batch_definition("whole")
        except (KeyError, LookupError, ValueError):
            batch_def = asset.add_batch_definition_whole_dataframe("whole")
        definition = context.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=f"validate_{name}", data=batch_def, suite=suite))
        result = definition.run(batch_parameters={"dataframe": frames[name]}, expectation_parameters=params,
                                result_format={"result_format": "SUMMARY", "partial_unexpected_count": 5})  # fmt: skip
        outcome = SuiteOutcome(suite=name, rows=len(frames[name]), passed=True)
        for r in result.results:
            if r.success:
                continue
            cfg = r.expectation_config
            severity = str(getattr(cfg, "severity", "critical")).split(".")[-1].lower()
            detail = {
                "expectation": cfg.type,
                "column": cfg.kwargs.get("column"),
                "severity": severity,
                "unexpected_count": (r.result or {}).get("unexpected_count"),
                "observed_value": (r.result or {}).get("observed_value"),
                "sample": [str(v) for v in (r.result or {}).get("partial_unexpected_list", [])[:5]],
            }
            (outcome.critical_failures if severity == "critical" else outcome.warnings).append(detail)
        outcome.passed = not outcome.critical_failures
        outcomes.append(outcome)
    try:
        context.build_data_docs()
    except Exception as exc:  # docs are a convenience; the JSON results are the record
        log.warning("could not build Data Docs: %s", exc)
    docs = quality_dir / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
    gate = GateResult(passed=all(o.passed for o in outcomes), suites=outcomes,
                      seconds=round(time.monotonic() - started, 3), docs_index=docs if docs.exists() else None)  # fmt: skip
    payload = json.dumps({"run_id": run_id, **gate.as_dict()}, indent=2, default=str).encode()
    name = f"results-{run_id}.json" if run_id else "results.json"
    gate.results_file = quality_dir / name
    write_atomic_bytes(gate.results_file, payload)
    write_atomic_bytes(quality_dir / "latest.json", payload)
    return gate


def warehouse_gate(data_dir: Path, thresholds: dict | None = None, run_id: str | None = None):
    """A gate for ``run_transform``: validates the lake and the freshly built warehouse before publishing."""

    def gate(build_file: Path) -> dict:
        from pipelines.summary import print_gate

        result = validate(data_dir, warehouse=build_file, thresholds=thresholds, run_id=run_id)
        print_gate(result)
        if not result.passed:
            failing = [f"{o.suite}: {f['expectation']}({f['column'] or ''})" for o in result.suites
                       for f in o.critical_failures]  # fmt: skip
            raise QualityGateFailed("data-quality gate failed, published warehouse left untouched: "
                                    + "; ".join(failing[:5]))  # fmt: skip
        return result.as_dict()

    return gate
