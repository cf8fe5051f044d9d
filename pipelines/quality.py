"""`revenue validate`: the Great Expectations gate over the lake and the warehouse.

Suites are committed JSON in ``expectations/suites/`` (GX 1.x format). Each suite
validates one pandas DataFrame that DuckDB builds from the lake or the warehouse
(GX's SQL path on DuckDB is broken, STACK.md). Money stays exact: frames carry
DECIMAL values as Python ``Decimal`` (via Arrow) or as exact booleans/integers
computed in DuckDB, never floats.

Each expectation has a severity: a failed ``critical`` one fails the gate (exit 2,
nothing published); a failed ``warning`` is reported. Results go to
``DATA_DIR/quality/``: ``results-<run_id>.json`` (every run's, kept), ``latest.json`` and Data Docs
HTML (``DATA_DIR/quality/gx/uncommitted/data_docs/local_site/index.html``) of the last
``DOCS_KEEP_RUNS`` runs: GX renders every stored result again at each build, so keeping them all
made each gate slower than the last (a stream publishes every 30 s).

dbt tests guard model logic (grain, keys, the MRR bridge, fct_mrr = mrr_monthly);
GX guards the lake's contract and certifies the finance tables.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from pipelines.child import after_answer
from pipelines.config import RunConfig
from pipelines.lake import write_atomic_bytes
from pipelines.layout import DataLayout
from transforms.errors import InputError, QualityGateFailed
from transforms.parse import REASONS
from transforms.schemas import LAST_SUPPORTED_DAY

log = logging.getLogger(__name__)

SUITES_DIR = Path(__file__).resolve().parent.parent / "expectations" / "suites"
LAKE_SUITES = ("lake_events", "lake_usage", "lake_dead_letter", "lake_ingest_summary", "lake_customer_months")
WAREHOUSE_SUITES = ("warehouse_mrr_monthly", "warehouse_cohorts", "warehouse_mrr_before_first_paid_month",
                    "warehouse_revenue_reconciliation", "warehouse_usage_pricing")  # fmt: skip
# lake tables that must exist once the metrics stage has run: a missing one fails the gate
REQUIRED_LAKE_TABLES = {"lake_customer_months": "customer_months"}
OLDEST_ALLOWED = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
# Data Docs show each suite's results of this many runs (newest first); older results and pages are removed
DOCS_KEEP_RUNS = 5
UNNAMED_RUN = "__none__"  # GX's folder for results stored without a run name


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


BATCH_ROWS = 100_000  # rows per DataFrame handed to GX: memory follows this, not the table


@dataclass
class Frame:
    """The rows one suite validates: a DuckDB query, read in batches of ``BATCH_ROWS`` (each validated
    in turn, so memory stays bounded at any table size), or a small DataFrame computed up front."""

    con: duckdb.DuckDBPyConnection | None = None
    sql: str = ""
    params: dict | None = None
    frame: object = None  # a ready DataFrame

    def batches(self):
        """DataFrames with exact types (DECIMAL as Decimal objects, nullable integers as Int64);
        at least one, possibly empty, so table-level expectations always run."""
        if self.frame is not None:
            yield self.frame
            return
        import pyarrow as pa

        # DuckDB hands out record batches of any size up to the one asked for (often one vector of
        # 2,048 rows): gather them into batches of BATCH_ROWS, so that a row-set expectation such as
        # uniqueness sees the whole frame whenever it fits in one batch, whatever the scan order
        reader = self.con.sql(self.sql, params=self.params).to_arrow_reader(BATCH_ROWS)
        pending, rows, seen = [], 0, False
        for batch in reader:
            pending.append(batch)
            rows += batch.num_rows
            if rows >= BATCH_ROWS:
                seen = True
                yield _to_pandas(pa.Table.from_batches(pending, reader.schema))
                pending, rows = [], 0
        if rows or not seen:
            yield _to_pandas(pa.Table.from_batches(pending, reader.schema))


def _to_pandas(data):
    import pandas as pd
    import pyarrow as pa

    ints = {pa.int8(), pa.int16(), pa.int32(), pa.int64()}
    return data.to_pandas(types_mapper=lambda t: pd.Int64Dtype() if t in ints else None)


def _scalar(con: duckdb.DuckDBPyConnection, sql: str):
    return con.execute(sql).fetchall()[0][0]


def _build_state(con: duckdb.DuckDBPyConnection, catalog: str) -> dict:
    """The lake load state a warehouse build recorded (pipelines.warehouse_lake), or {}."""
    try:
        rows = con.execute(f"select state from {catalog}.lake._load_state").fetchall()
    except duckdb.Error:
        return {}
    return json.loads(rows[0][0]) if rows else {}


def _lake_connection(layout: DataLayout, snapshot: Path | None) -> tuple[duckdb.DuckDBPyConnection, set[str], bool]:
    """A connection where ``lake_<table>`` names each lake table and ``new_<table>`` the rows to
    validate one by one: with ``snapshot`` (the gate of a build), the build's ``lake`` schema and the
    rows its load added since the published warehouse; else the Delta tables' current versions, every
    row new. Returns the tables that exist and whether the snapshot was loaded incrementally (then
    ``changed_customers`` names the customers whose lake rows changed)."""
    from pipelines import lake
    from pipelines.warehouse_lake import FILE_COLUMN, memory_limit
    from transforms import schemas

    # beyond its memory limit DuckDB spills: into the build's folder (removed with it), else under quality/
    spill = snapshot.parent / "gate.tmp" if snapshot is not None else layout.quality_spill_dir
    con = duckdb.connect(config={"memory_limit": memory_limit(), "temp_directory": str(spill)})
    present = set()
    incremental = False
    if snapshot is not None:
        quoted = str(snapshot).replace("'", "''")
        con.execute(f"attach '{quoted}' as wh (read_only)")
        incremental = _build_state(con, "wh").get("mode") == "incremental"
        if incremental:
            con.execute("create view changed_customers as select customer_id from wh.lake.changed_customers")
    for table in schemas.LAKE_SCHEMAS:
        if snapshot is not None:
            exists = con.execute("select count(*) from information_schema.tables where table_catalog = 'wh' "
                                 "and table_schema = 'lake' and table_name = ?", [table]).fetchall()[0][0]  # fmt: skip
            if exists:
                con.execute(f'create view "lake_{table}" as select * from wh.lake."{table}"')
                con.execute(f'create view "new_{table}" as select * from wh.lake."{table}" where {FILE_COLUMN} in '
                            f"(select file from wh.lake._files where table_name = '{table}' and new_in_build)")  # fmt: skip
                present.add(table)
                continue
            data = None
        else:
            data = lake.dataset(layout, table)
            if data is not None:
                present.add(table)
        con.register(f"lake_{table}", data if data is not None else schemas.with_partition_column(table).empty_table())
        con.execute(f'create view "new_{table}" as select * from "lake_{table}"')
    return con, present, incremental


def dead_letter_window(new_accepted: int, new_dead: int, accepted: int, dead: int, min_lines: int) -> dict:
    """The dead-letter ratio the gate judges, over a window that means something: the lines new
    since the published warehouse when there are at least ``min_lines`` of them, else the whole
    lake when it has that many, else none (too few lines to judge: the ratio is null, reported,
    and passes). Counts, not money."""
    for window, good, bad in (("new lines", new_accepted, new_dead), ("lake", accepted, dead)):
        if good + bad >= max(min_lines, 1):
            return {"dead_letter_ratio": bad / (good + bad), "window": window, "lines": good + bad,
                    "dead_letters": bad}  # fmt: skip
    return {"dead_letter_ratio": None, "window": f"fewer than {min_lines} lines", "lines": accepted + dead,
            "dead_letters": dead}  # fmt: skip


def lake_frames(layout: DataLayout, snapshot: Path | None = None, min_lines: int = 100) -> tuple[dict, object]:
    """The frames the lake suites validate, and the connection they read (close it after).

    Row-level suites read only the new rows (the whole lake when validating it on its own); the
    uniqueness of event ids across the whole lake, the dead-letter ratio and the continuity of each
    changed customer's months are computed in DuckDB over whole tables, never pulled into pandas.
    An absent ingest table is an empty frame; an absent (or, with events, empty) customer_months is
    left out, and ``validate`` fails on it."""
    import pandas as pd

    con, present, incremental = _lake_connection(layout, snapshot)
    frames = {}
    for name, table, columns in (
        ("lake_events", "events", "event_id, event_type, occurred_at, customer_id, currency, amount, unit_amount, tax"),
        ("lake_usage", "usage", "event_id, occurred_at, customer_id, meter, quantity"),
    ):
        frames[name] = Frame(con, f"""
            with repeated as (
                select event_id from lake_{table}
                where event_id in (select event_id from new_{table})
                group by event_id having count(*) > 1
            )
            select {columns}, event_id not in (select event_id from repeated) as event_id_unique_in_lake
            from new_{table}
        """)
    frames["lake_dead_letter"] = Frame(con, "select reason, message from new_dead_letter")
    new_accepted, new_dead, accepted, dead = con.execute("""
        select (select count(*) from new_events) + (select count(*) from new_usage),
               (select count(*) from new_dead_letter),
               (select count(*) from lake_events) + (select count(*) from lake_usage),
               (select count(*) from lake_dead_letter)
    """).fetchall()[0]
    window = dead_letter_window(new_accepted, new_dead, accepted, dead, min_lines)
    frames["lake_ingest_summary"] = Frame(frame=pd.DataFrame({k: [v] for k, v in window.items()}))
    scope = "where customer_id in (select customer_id from changed_customers)" if incremental else ""
    frames["lake_customer_months"] = Frame(con, f"""
        select customer_id, "month", mrr, movement,
               coalesce(datediff('month', lag("month") over (partition by customer_id order by "month"), "month"), 1)
                   as months_since_previous_row
        from lake_customer_months {scope}
    """)
    if "customer_months" not in present or (not _scalar(con, "select count(*) from lake_customer_months")
                                            and accepted):  # fmt: skip
        del frames["lake_customer_months"]
    return frames, con


def lake_frames_in_memory(layout: DataLayout, snapshot: Path, min_lines: int) -> tuple[dict, dict] | None:
    """The lake suites' frames of a build (``lake_frames``) read into memory now, with the suites
    that cannot run for a missing table; None when a frame holds more than one batch
    (``BATCH_ROWS``): a full build's lake, validated after dbt in batches instead. An incremental
    build's lake rows to validate are its batch's, so the suites can run beside dbt, which holds
    the build file meanwhile (``warehouse_gate``)."""
    frames, con = lake_frames(layout, snapshot=snapshot, min_lines=min_lines)
    try:
        ready = {}
        for name, frame in frames.items():
            if frame.frame is not None:
                ready[name] = frame
                continue
            reader = con.sql(frame.sql, params=frame.params).to_arrow_reader(BATCH_ROWS)
            batches, rows = [], 0
            for batch in reader:
                rows += batch.num_rows
                if rows > BATCH_ROWS:
                    return None
                batches.append(batch)
            import pyarrow as pa

            ready[name] = Frame(frame=_to_pandas(pa.Table.from_batches(batches, reader.schema)))
    finally:
        con.close()
    missing = {s: f"lake table {t} is missing: run `revenue metrics`"
               for s, t in REQUIRED_LAKE_TABLES.items() if s not in ready}  # fmt: skip
    return ready, missing


def warehouse_frames_or_missing(warehouse: Path, half_minor_unit, changed_only: bool = False) -> tuple[dict, dict, object]:
    """The warehouse frames and their connection, or (when a table the suites read is absent) which
    suites could not run."""
    try:
        frames, con = warehouse_frames(warehouse, half_minor_unit, changed_only)
        return frames, {}, con
    except duckdb.CatalogException as exc:
        why = f"warehouse table missing: {str(exc).splitlines()[0]}"
        return {}, dict.fromkeys(WAREHOUSE_SUITES, why), None


def warehouse_frames(warehouse: Path, half_minor_unit, changed_only: bool = False) -> tuple[dict, object]:
    """The frames the warehouse suites validate (read-only connection to a built warehouse).

    ``half_minor_unit``: half the reporting currency's minor unit (0.005 USD, 0.5 JPY, 0.0005 KWD),
    the most a rounded ARPA may differ from MRR / customers, per customer. ``changed_only``: in an
    incrementally built warehouse, the customer-grain suites read only the customers the build
    recomputed (the others passed when their rows were built); the monthly tables, cohorts and the
    daily-to-monthly revenue reconciliation are whole-table invariants, computed in SQL aggregates.
    """
    from pipelines.warehouse_lake import memory_limit

    con = duckdb.connect(str(warehouse), read_only=True, config={"memory_limit": memory_limit()})
    try:
        changed_only = changed_only and _build_state(con, current_catalog(con)).get("mode") == "incremental"
        changed = "in (select customer_id from lake.changed_customers)"
        scope, scope_f = (f"customer_id {changed}", f"f.customer_id {changed}") if changed_only else ("true", "true")
        frames = {
            "warehouse_mrr_monthly": Frame(con, """
                select "month", mrr, customer_churn_rate, gross_mrr_churn_rate,
                       coalesce(datediff('month', lag("month") over (order by "month"), "month"), 1)
                           as months_since_previous_row,
                       case when active_customers = 0 then arpa is null
                            else arpa * active_customers between mrr - $half * active_customers
                                 and mrr + $half * active_customers end as arpa_matches_mrr_over_customers
                from mrr_monthly
            """, {"half": half_minor_unit}),
            "warehouse_cohorts": Frame(con, "select cohort_month, months_since_start, logo_retention, "
                                            "gross_mrr_retention from fct_cohort_retention"),  # fmt: skip
            "warehouse_mrr_before_first_paid_month": Frame(con, f"""
                select f.customer_id, f."month", f.mrr, d.first_paid_month
                from fct_mrr f join dim_customers d using (customer_id)
                where f.mrr > 0 and (d.first_paid_month is null or f."month" < d.first_paid_month)
                    and {scope_f}
            """),
            "warehouse_revenue_reconciliation": Frame(con, """
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
            "warehouse_usage_pricing": Frame(con, f'select customer_id, "month", meter, usage_revenue '
                                                  f"from fct_usage_monthly where {scope}"),  # fmt: skip
        }
        for frame in frames.values():  # a missing table fails here, before any suite runs
            con.execute(f"select * from ({frame.sql}) limit 0", frame.params or {}).fetchall()
    except BaseException:
        con.close()
        raise
    return frames, con


def current_catalog(con: duckdb.DuckDBPyConnection) -> str:
    return _scalar(con, "select current_database()")


def _parameters(as_of: dt.date | None, thresholds: dict) -> dict:
    from iso4217 import Currency

    end = dt.datetime.combine((as_of or LAST_SUPPORTED_DAY) + dt.timedelta(days=1), dt.time(), dt.UTC)
    return {
        "iso_currencies": sorted(c.code for c in Currency if c.exponent is not None),
        "reason_codes": list(REASONS),
        "oldest_allowed": OLDEST_ALLOWED,
        "as_of_end": end,
        **thresholds,
    }


def import_gx():
    """``great_expectations``, imported with ``scipy.stats`` left to load on first use: GX imports it
    for one expectation these suites do not use (KL divergence), and it is ~1.4 s of the ~4 s GX
    takes to import here. Standard library lazy loading (``importlib.util.LazyLoader``): the module
    runs in full the first time anything reads one of its attributes."""
    import sys

    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    if "great_expectations" not in sys.modules and "scipy.stats" not in sys.modules:
        import importlib.util

        import scipy

        spec = importlib.util.find_spec("scipy.stats")
        spec.loader = importlib.util.LazyLoader(spec.loader)
        module = importlib.util.module_from_spec(spec)
        sys.modules["scipy.stats"] = module
        spec.loader.exec_module(module)
        scipy.stats = module  # ``from scipy import stats`` then takes it without importing it
    import great_expectations

    return great_expectations


def prewarm() -> threading.Thread:
    """Import Great Expectations on a background thread (about 2.5 s of one core here), so that a
    gate that follows a dbt build (a child process, on the other core) does not wait for it."""

    def load():
        import_gx()

    thread = threading.Thread(target=load, name="gx-prewarm", daemon=True)
    thread.start()
    return thread


def _load_suite(gx, name: str):
    doc = json.loads((SUITES_DIR / f"{name}.json").read_text())
    return gx.ExpectationSuite(name=doc["name"], expectations=doc["expectations"], meta=doc.get("meta"))


def validate(config: RunConfig, warehouse: Path | None = None, suites: tuple[str, ...] | None = None,
             run_id: str | None = None, lake_checks: bool = True, lake_from_warehouse: bool = False,
             prepared=None, lake_done: tuple[list, dict] | None = None, gx_run: str | None = None) -> GateResult:  # fmt: skip
    """Run the suites; write results and Data Docs under DATA_DIR/quality; never raises on failures.

    A suite whose table is missing (a derived lake table, a warehouse table) fails: the gate
    never passes on what it could not see. ``lake_from_warehouse``: the gate of a build: check the
    lake snapshot the build loaded, row by row only what it added since the published warehouse
    (and, in the warehouse, the customers it recomputed), instead of the lake's current versions
    and the whole warehouse. ``lake_done``: the lake suites' outcomes and missing tables, validated
    already (``warehouse_gate``'s ``before_build``): only the warehouse suites run here.
    ``gx_run``: the name GX stores these results under (default: ``run_id``, else a timestamp).
    """
    started = time.monotonic()
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    layout = config.layout
    frames, missing, connections = {}, {}, []
    done: list[SuiteOutcome] = []
    if lake_done is not None:
        done, missing = list(lake_done[0]), dict(lake_done[1])
        lake_checks = False
    try:
        if lake_checks:
            frames, con = lake_frames(layout, snapshot=warehouse if lake_from_warehouse else None,
                                      min_lines=config.thresholds.dead_letter_min_lines)  # fmt: skip
            connections.append(con)
            missing = {s: f"lake table {t} is missing: run `revenue metrics`"
                       for s, t in REQUIRED_LAKE_TABLES.items() if s not in frames}  # fmt: skip
        if warehouse is not None:
            wh_frames, wh_missing, con = warehouse_frames_or_missing(warehouse, config.reporting_minor_unit / 2,
                                                                     changed_only=lake_from_warehouse)  # fmt: skip
            if con is not None:
                connections.append(con)
            frames.update(wh_frames)
            missing.update(wh_missing)
        if not frames and not done:
            raise InputError(f"nothing to validate under {layout.root}: run `revenue ingest` first")
        outcomes = _run_suites(config, frames, [s for s in (suites or LAKE_SUITES + WAREHOUSE_SUITES) if s in frames],
                               gx_run or run_id, prepared, done)  # fmt: skip
    finally:
        for con in connections:
            con.close()
    for name, why in sorted(missing.items()):
        if suites is None or name in suites:
            outcomes.append(SuiteOutcome(suite=name, rows=0, passed=False, critical_failures=[{
                "expectation": "table_exists", "column": None, "severity": "critical",
                "unexpected_count": None, "observed_value": why, "sample": []}]))  # fmt: skip
    docs = layout.data_docs_index  # rendered after the suites, maybe not yet (``_run_suites``)
    gate = GateResult(passed=all(o.passed for o in outcomes), suites=outcomes,
                      seconds=round(time.monotonic() - started, 3), docs_index=docs if outcomes else None)  # fmt: skip
    payload = json.dumps({"run_id": run_id, **gate.as_dict()}, indent=2, default=str).encode()
    gate.results_file = layout.quality_results(run_id)
    write_atomic_bytes(gate.results_file, payload)
    write_atomic_bytes(layout.quality_latest, payload)
    return gate


def prune_docs_history(quality_dir: Path, keep: int | None = None) -> int:
    """Keep each suite's stored GX results and their Data Docs pages of its ``keep`` newest runs (the
    store's ``<suite>/<run name>/`` folders, newest by modification time); returns the runs removed.
    The gate's own record, ``results-<run_id>.json``, is never removed."""
    import shutil

    keep = DOCS_KEEP_RUNS if keep is None else keep
    store = quality_dir / "gx" / "uncommitted" / "validations"
    pages = quality_dir / "gx" / "uncommitted" / "data_docs" / "local_site" / "validations"
    removed = 0
    for suite in sorted(p for p in store.glob("*") if p.is_dir()) if store.is_dir() else []:
        # its runs, then the results stored without a run name (earlier releases), by time
        for runs, shown in ((suite, pages / suite.name), (suite / UNNAMED_RUN, pages / suite.name / UNNAMED_RUN)):
            if not runs.is_dir():
                continue  # no unnamed folder, or it went with the old runs just above
            newest_first = sorted((p for p in runs.iterdir() if p.is_dir()),
                                  key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)  # fmt: skip
            for old in newest_first[keep:]:
                shutil.rmtree(old)
                shutil.rmtree(shown / old.name, ignore_errors=True)
                removed += 1
    return removed


def _gx_setup(quality_dir: Path, names) -> tuple[object, dict]:
    """The GX file context under ``quality_dir`` with the committed suites ``names`` stored, each with
    its dataframe asset and validation definition: ``(context, {suite: definition})``. Nothing here
    depends on the data: a gate prepares it while dbt builds (``warehouse_gate``)."""
    gx = import_gx()

    quality_dir.mkdir(parents=True, exist_ok=True)
    context = gx.get_context(mode="file", project_root_dir=str(quality_dir))
    context.variables.progress_bars = {"globally": False, "metric_calculations": False}
    source = context.data_sources.add_or_update_pandas("revenue_frames")
    definitions = {}
    for name in names:
        suite = context.suites.add_or_update(_load_suite(gx, name))
        try:
            asset = source.get_asset(name)
        except LookupError:
            asset = source.add_dataframe_asset(name)
        try:
            batch_def = asset.get_batch_definition("whole")
        except (KeyError, LookupError, ValueError):
            batch_def = asset.add_batch_definition_whole_dataframe("whole")
        definitions[name] = context.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=f"validate_{name}", data=batch_def, suite=suite))
    return context, definitions


def _gx_run_name(run_id: str | None) -> str:
    return run_id or f"validate-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S%fZ}"


def _run_suites(config: RunConfig, frames: dict[str, Frame], wanted: list[str], run_id: str | None = None,
                prepared=None, done: list[SuiteOutcome] = ()) -> list[SuiteOutcome]:  # fmt: skip
    """Each suite over each batch of its frame (``_validate_suites``), then this run's Data Docs,
    which also show the suites of ``done`` (validated earlier under the same ``run_id``)."""
    quality_dir = config.layout.quality_dir
    run_name = _gx_run_name(run_id)
    context, outcomes = _validate_suites(config, frames, wanted, run_name, prepared)
    prune_docs_history(quality_dir)
    shown = [o.suite for o in done] + wanted
    # rendered once a gate's process has answered (``after_answer``): beside the run's report
    after_answer(lambda: build_data_docs(context, quality_dir, run_name, shown))
    return list(done) + outcomes


def _validate_suites(config: RunConfig, frames: dict[str, Frame], wanted: list[str], run_name: str,
                     prepared=None) -> tuple[object, list[SuiteOutcome]]:  # fmt: skip
    """Each suite over each batch of its frame; a suite's failures are merged over its batches
    (unexpected counts added, the first samples kept). GX stores the results under ``run_name``.
    ``prepared``: a future of ``_gx_setup`` for (at least) the ``wanted`` suites, else set up here.
    Returns the GX context and the outcomes."""
    import_gx()
    from great_expectations.core.run_identifier import RunIdentifier

    params = _parameters(config.as_of, config.thresholds.as_parameters())
    quality_dir = config.layout.quality_dir
    context, definitions = prepared.result() if prepared is not None else _gx_setup(quality_dir, wanted)
    outcomes = []
    gx_run = RunIdentifier(run_name=run_name)
    for name in wanted:
        definition = definitions[name]
        outcome = SuiteOutcome(suite=name, rows=0, passed=True)
        failures: dict[tuple, dict] = {}
        for frame in frames[name].batches():
            outcome.rows += len(frame)
            result = definition.run(batch_parameters={"dataframe": frame}, expectation_parameters=params, run_id=gx_run,
                                    result_format={"result_format": "SUMMARY", "partial_unexpected_count": 5})  # fmt: skip
            for r in result.results:
                if r.success:
                    continue
                cfg = r.expectation_config
                severity = str(getattr(cfg, "severity", "critical")).split(".")[-1].lower()
                key = (cfg.type, cfg.kwargs.get("column"), severity)
                count = (r.result or {}).get("unexpected_count")
                if key in failures:
                    merged = failures[key]
                    if count is not None:
                        merged["unexpected_count"] = (merged["unexpected_count"] or 0) + count
                    continue
                failures[key] = {
                    "expectation": cfg.type,
                    "column": cfg.kwargs.get("column"),
                    "severity": severity,
                    "unexpected_count": count,
                    "observed_value": (r.result or {}).get("observed_value"),
                    "sample": [str(v) for v in (r.result or {}).get("partial_unexpected_list", [])[:5]],
                }
        for detail in failures.values():
            (outcome.critical_failures if detail["severity"] == "critical" else outcome.warnings).append(detail)
        outcome.passed = not outcome.critical_failures
        outcomes.append(outcome)
    return context, outcomes


def _docs_complete(quality_dir: Path, run_name: str) -> bool:
    """Whether the Data Docs site has the page of every stored suite and validation result but this
    run's (pages mirror the stores' paths, ``.json`` -> ``.html``), rendered by this GX version."""
    gx = import_gx()
    gx_dir = quality_dir / "gx"
    site = gx_dir / "uncommitted" / "data_docs" / "local_site"
    marker = site / DOCS_VERSION_FILE
    if not (site / "index.html").is_file() or not marker.is_file() or marker.read_text() != gx.__version__:
        return False
    for store, pages in ((gx_dir / "expectations", site / "expectations"),
                         (gx_dir / "uncommitted" / "validations", site / "validations")):  # fmt: skip
        for stored in store.rglob("*.json") if store.is_dir() else []:
            relative = stored.relative_to(store)
            if store.name == "validations" and relative.parts[1:2] == (run_name,):
                continue  # rendered now
            if not (pages / relative).with_suffix(".html").is_file():
                return False
    return True


DOCS_VERSION_FILE = ".gx-version"  # the GX version that rendered the site's pages


def build_data_docs(context, quality_dir: Path, run_name: str, suites: list[str]) -> None:
    """Render this run's pages (its validation results, the suites it stored) and the index. The pages
    of earlier runs' results do not change: they are rendered again only when the site lacks one (a
    failed build, a first run) or was rendered by another GX version, as GX's own incremental build
    (``resource_identifiers``) allows. Never raises: docs are a convenience, the JSON results the record."""
    gx = import_gx()
    from great_expectations.data_context.types.resource_identifiers import ExpectationSuiteIdentifier

    try:
        if _docs_complete(quality_dir, run_name):
            ours = [key for key in context.validation_results_store.list_keys()
                    if key.run_id.run_name == run_name]  # fmt: skip
            context.build_data_docs(resource_identifiers=ours + [ExpectationSuiteIdentifier(name=s) for s in suites])
        else:
            context.build_data_docs()
        site = quality_dir / "gx" / "uncommitted" / "data_docs" / "local_site"
        write_atomic_bytes(site / DOCS_VERSION_FILE, gx.__version__.encode())
    except Exception as exc:  # docs are a convenience; the JSON results are the record
        log.warning("could not build Data Docs: %s", exc)


def warehouse_gate(config: RunConfig, run_id: str | None = None, on_result=None):
    """A gate for ``run_transform``: validates the lake and the freshly built warehouse before publishing.

    ``on_result(GateResult)`` is called with every result (the CLI prints it) before a failure raises.
    """

    prepared = []
    early: dict = {}  # the lake suites started beside dbt (``before_build``): thread, outcome, error
    gx_run = _gx_run_name(run_id)  # the lake suites and the warehouse suites store their results under one name

    def gate(build_file: Path) -> dict:
        lake_done = None
        if early:
            early.pop("thread").join()
            if "error" in early:
                raise early.pop("error")
            lake_done = early.pop("outcome")
        result = validate(config, warehouse=build_file, run_id=run_id, lake_from_warehouse=True,
                          prepared=prepared[0] if prepared else None, lake_done=lake_done, gx_run=gx_run)  # fmt: skip
        if on_result is not None:
            on_result(result)
        raise_on_failure(result)
        return result.as_dict()

    def prepare() -> None:
        """Import GX and set up its context and suites (``_gx_setup``) on a background thread now, e.g.
        while dbt builds, instead of when the gate runs."""
        if not prepared:
            from concurrent.futures import ThreadPoolExecutor

            pool = ThreadPoolExecutor(1, thread_name_prefix="gx-setup")
            prepared.append(pool.submit(_gx_setup, config.layout.quality_dir, LAKE_SUITES + WAREHOUSE_SUITES))
            pool.shutdown(wait=False)

    def before_build(build_file: Path) -> bool:
        """Once the lake copy is loaded and before dbt opens the build file: when the lake rows to
        validate fit in one batch each (an incremental build), read them now and validate them on
        a background thread while dbt builds in its own process; ``gate`` then adds the warehouse
        suites. Else (a full build) nothing: ``gate`` validates the lake after dbt, as before.
        Returns whether the suites started."""
        ready = lake_frames_in_memory(config.layout, build_file, config.thresholds.dead_letter_min_lines)
        if ready is None:
            return False
        frames, missing = ready
        prepare()

        def work() -> None:
            try:
                _, outcomes = _validate_suites(config, frames, [s for s in LAKE_SUITES if s in frames], gx_run,
                                               prepared[0])  # fmt: skip
                early["outcome"] = (outcomes, missing)
            except BaseException as exc:  # noqa: BLE001 - raised again by ``gate``, in the caller's thread
                early["error"] = exc

        early["thread"] = threading.Thread(target=work, name="gx-lake-suites", daemon=True)
        early["thread"].start()
        return True

    def abandon() -> None:
        """The build failed before its gate: wait for the lake suites started beside dbt, if any (GX
        is writing their results), and drop their outcome."""
        if early:
            early.pop("thread").join()
            early.clear()

    gate.prepare = prepare
    gate.before_build = before_build
    gate.abandon = abandon
    return gate


def raise_on_failure(result: GateResult) -> None:
    if not result.passed:
        failing = [f"{o.suite}: {f['expectation']}({f['column'] or ''})" for o in result.suites
                   for f in o.critical_failures]  # fmt: skip
        raise QualityGateFailed("data-quality gate failed, published warehouse left untouched: "
                                + "; ".join(failing[:5]))  # fmt: skip
