"""`revenue metrics`: the lake's events/ and usage/ -> customer_months/ and customer_lifetime/.

    ListMonths -> ReadMonth -> PreAggregateMonths (Arrow) -+-> partials ------------------+
                                                          +-> subscriptions, first_seen  |
                                                               -> ReplaySubscriptions ---+
      -> CalendarMonthAggregate (calendar-month windows) -> ComputeCustomerMonths -> staged files
    then, in the driver: fail on missing FX rates, swap the output tables in atomically.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc

from pipelines import lake
from pipelines.beam_options import pipeline_options
from pipelines.config import RunConfig
from pipelines.layout import DataLayout
from pipelines.manifest import new_run_id, write_manifest
from transforms import schemas
from transforms.calendar import month_start, next_month
from transforms.errors import ConfigError, InputError
from transforms.metrics import (
    CalendarMonthAggregate,
    ComputeCustomerMonths,
    MonthSlice,
    PreAggregateMonths,
    ReplaySubscriptions,
)

log = logging.getLogger(__name__)



@dataclass
class MetricsResult:
    run_id: str
    as_of: dt.date
    reporting_currency: str
    customer_months: int
    customers: int
    months: int
    mrr_at_as_of: object
    active_customers_at_as_of: int
    seconds: float
    lake_versions: dict = field(default_factory=dict)  # what it read (events, usage) and committed


class _ReadMonthFn(beam.DoFn):
    """``(month, last day, pinned versions)`` -> the month's events and usage, read from the Delta
    tables at those versions (partition pruning on ``event_date``: only the month's files are read)."""

    def __init__(self, data_dir: str):
        self.data_dir = data_dir

    def process(self, element):
        month, last_day, pinned = element
        layout = DataLayout(Path(self.data_dir))
        in_month = (pc.field("event_date") >= pa.scalar(month, pa.date32())) & (
            pc.field("event_date") <= pa.scalar(last_day, pa.date32()))
        tables = {}
        for table, schema in (("events", schemas.EVENTS), ("usage", schemas.USAGE)):
            version = pinned.get(table)
            data = lake.read_table(layout, table, version=version, filter=in_month) if version is not None else None
            tables[table] = data.select(schema.names).cast(schema) if data is not None else schema.empty_table()
        yield MonthSlice(month, tables["events"], tables["usage"])


class _WriteDerivedFn(beam.DoFn):
    """Rows of a derived table -> data files in its Delta folder (uncommitted until the driver commits)."""

    def __init__(self, data_dir: str, table: str, sort_key: str, run_id: str):
        self.data_dir, self.table, self.sort_key, self.run_id = data_dir, table, sort_key, run_id

    def process(self, element):
        shard, table = element
        partition = schemas.PARTITION_COLUMNS[self.table][0]
        if partition == "as_of":
            table = table.drop_columns(["as_of"]).append_column("as_of", table["as_of"])
        root = DataLayout(Path(self.data_dir)).table(self.table)
        paths = lake.write_partitioned(table, root, partition, f"part-{self.run_id}-{shard:03d}.parquet",
                                       [(self.sort_key, "ascending")])  # fmt: skip
        yield len(paths)


class _RecordFn(beam.DoFn):
    def __init__(self, path: str):
        self.path = path

    def process(self, items):
        lake.write_atomic_bytes(Path(self.path), json.dumps(sorted({(c, d.isoformat()) for c, d in items})).encode())
        yield len(items)


def run_metrics(config: RunConfig, run_id: str | None = None, write_run_manifest: bool = True,
                shards: int = 1) -> MetricsResult:  # fmt: skip
    """customer_months and customer_lifetime for ``config.as_of`` (or the lake's latest event day)."""
    started = time.monotonic()
    layout, currency = config.layout, config.reporting_currency
    run_id = run_id or new_run_id()
    with lake.lake_lock(layout):
        config = config.resolve_as_of()
        as_of = config.as_of
        pinned = lake.versions(layout, ("events", "usage"))  # this run reads exactly these versions
        days = [d for t in ("events", "usage") for d in lake.partition_values(layout, t, pinned.get(t)) if d <= as_of]
        if not days:
            raise InputError(f"no events on or before the as-of date {as_of}")
        elements = [(m, min(next_month(m) - dt.timedelta(days=1), as_of), pinned)
                    for m in sorted({month_start(d) for d in days})]  # fmt: skip
        stage = layout.staging(run_id)
        stage.mkdir(parents=True)
        with lake.run_writes(layout, run_id, schemas.DERIVED_TABLES) as committed_tables:
            with beam.Pipeline(options=pipeline_options(config.beam_args)) as p:
                slices = p | "ListMonths" >> beam.Create(elements, reshuffle=False) | "ReadMonth" >> beam.ParDo(_ReadMonthFn(str(layout.root)))
                pre = slices | "PreAggregateMonths" >> PreAggregateMonths(config.fx, currency, as_of, shards)
                replayed = {"subscriptions": pre.subscriptions, "first_seen": pre.first_seen} | "ReplaySubscriptions" >> \
                    ReplaySubscriptions(config.fx, as_of, currency)  # fmt: skip
                monthly = (
                    (pre.partials, replayed.partials)
                    | "AllPartials" >> beam.Flatten()
                    | "CalendarMonthAggregate" >> CalendarMonthAggregate()
                    | "DropPane" >> beam.Map(lambda kmtp: (kmtp[0], kmtp[1], kmtp[2])).with_output_types(object)
                )
                facts = monthly | "ComputeCustomerMonths" >> ComputeCustomerMonths(currency, as_of)
                _ = facts.customer_months | "WriteCustomerMonths" >> beam.ParDo(
                    _WriteDerivedFn(str(layout.root), "customer_months", "customer_id", run_id))
                _ = facts.customer_lifetime | "WriteCustomerLifetime" >> beam.ParDo(
                    _WriteDerivedFn(str(layout.root), "customer_lifetime", "customer_id", run_id))
                _ = (pre.revenue_daily | "KeyRevenueDaily" >> beam.Map(lambda table: (0, table))
                     | "WriteRevenueDaily" >> beam.ParDo(_WriteDerivedFn(str(layout.root), "revenue_daily", "date", run_id)))
                _ = ((pre.fx_missing, replayed.fx_missing) | "AllFxMissing" >> beam.Flatten()
                     | "CollectFxMissing" >> beam.combiners.ToList()
                     | "RecordFxMissing" >> beam.ParDo(_RecordFn(str(stage / "fx_missing.json"))))  # fmt: skip
            missing = json.loads((stage / "fx_missing.json").read_text())
            if missing:
                missing_currency, day = missing[0]
                more = f" (and {len(missing) - 1} more currency-days)" if len(missing) > 1 else ""
                raise ConfigError(f"no FX rate for {missing_currency} -> {currency} on or before {day}{more}; "
                                  "add it to the FX file (--fx-rates)")  # fmt: skip
            # each derived table is replaced whole, one commit each; a kill between them is made whole by
            # the next metrics run (it recomputes all three from the pinned events and usage)
            committed = {}
            for table in schemas.DERIVED_TABLES:
                committed[table] = lake.commit(layout, table, lake.run_files(layout, table, run_id), run_id,
                                               mode="overwrite")  # fmt: skip
                committed_tables.add(table)
        shutil.rmtree(stage, ignore_errors=True)
    cm = lake.read_table(layout, "customer_months", ["customer_id", "month", "mrr"],
                         version=committed["customer_months"])
    at = cm.filter(pc.equal(cm["month"], pa.scalar(month_start(as_of), pa.date32())))
    positive = at.filter(pc.greater(at["mrr"], pa.scalar(0, schemas.MONEY).cast(schemas.MONEY)))
    result = MetricsResult(
        run_id=run_id, as_of=as_of, reporting_currency=currency, customer_months=cm.num_rows,
        customers=len(pc.unique(cm["customer_id"])), months=len(pc.unique(cm["month"])),
        mrr_at_as_of=pc.sum(at["mrr"]).as_py() if at.num_rows else 0, active_customers_at_as_of=positive.num_rows,
        seconds=round(time.monotonic() - started, 3), lake_versions={**pinned, **committed},
    )  # fmt: skip
    if write_run_manifest:
        write_manifest(layout, run_id, "metrics", {
            "config": config.describe(), "lake_versions": result.lake_versions,
            "customer_months": result.customer_months,
            "customers": result.customers, "months": result.months, "mrr_at_as_of": str(result.mrr_at_as_of),
            "seconds": result.seconds,
        })  # fmt: skip
    return result


class _WriteLateFn(beam.DoFn):
    def __init__(self, data_dir: str):
        self.data_dir = data_dir
        self.written = beam.metrics.Metrics.counter("metrics", "too_late_rows_written")

    def process(self, table: pa.Table, timestamp=beam.DoFn.TimestampParam):
        import uuid

        rows = table.num_rows
        late = pa.table({
            "customer_id": table["customer_id"], "measure": table["measure"], "key": table["key"],
            "amount": table["amount"], "count": table["count"],
            "event_time": pa.array([timestamp.micros] * rows, pa.int64()).cast(schemas.TS),
            "month": table["month"],
        })  # fmt: skip
        layout = DataLayout(Path(self.data_dir))
        name = f"late-{uuid.uuid4().hex}"
        written = lake.write_partitioned(late, layout.table("late_events"), "month", f"part-{name}.parquet",
                                         [("customer_id", "ascending")])  # fmt: skip
        lake.commit(layout, "late_events", written, name)  # one append per element: visible whole, or not at all
        self.written.inc(rows)
        yield from (str(p) for p in written)


class WriteLateEvents(beam.PTransform):
    """Sink for ``RouteLateEvents``' ``too_late`` output: the lake's ``late_events`` Delta table
    (one append commit per element)."""

    def __init__(self, layout: DataLayout):
        super().__init__()
        self.data_dir = str(layout.root)

    def expand(self, too_late):
        return too_late | "WriteLateEvents" >> beam.ParDo(_WriteLateFn(self.data_dir))
