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
import time
from dataclasses import dataclass
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
from transforms.calendar import month_start
from transforms.errors import ConfigError, InputError
from transforms.metrics import (
    CalendarMonthAggregate,
    ComputeCustomerMonths,
    MonthSlice,
    PreAggregateMonths,
    ReplaySubscriptions,
)

log = logging.getLogger(__name__)

DERIVED_TABLES = ("customer_months", "customer_lifetime", "revenue_daily")  # replaced whole by each run


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


def _read_month(parts: list, schema: pa.Schema) -> pa.Table:
    import pyarrow.dataset as ds

    files = [f for _, day_files in parts for f in day_files]
    if not files:
        return schema.empty_table()
    return ds.dataset(files, schema=schema, format="parquet").to_table()  # one multi-threaded scan per month


class _ReadMonthFn(beam.DoFn):
    def process(self, element):
        month, event_parts, usage_parts = element
        yield MonthSlice(month, _read_month(event_parts, schemas.EVENTS), _read_month(usage_parts, schemas.USAGE))


class _WriteStagedFn(beam.DoFn):
    def __init__(self, out_dir: str, table: str, partition: str, sort_key: str):
        self.out_dir, self.table, self.partition, self.sort_key = out_dir, table, partition, sort_key

    def process(self, element):
        shard, table = element
        if self.partition == "as_of":
            table = table.drop_columns(["as_of"]).append_column("as_of", table["as_of"])
        paths = lake.write_partitioned(table, Path(self.out_dir) / self.table, self.partition,
                                       f"part-{shard:03d}.parquet", [(self.sort_key, "ascending")])  # fmt: skip
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
        lake.recover(layout)
        config = config.resolve_as_of()
        as_of = config.as_of
        events_by_day = {d: f for d, f in layout.day_partitions("events").items() if d <= as_of}
        usage_by_day = {d: f for d, f in layout.day_partitions("usage").items() if d <= as_of}
        if not events_by_day and not usage_by_day:
            raise InputError(f"no events on or before the as-of date {as_of}")
        months: dict[dt.date, tuple[list, list]] = {}
        for d, files in sorted(events_by_day.items()):
            months.setdefault(month_start(d), ([], []))[0].append((d, [str(f) for f in files]))
        for d, files in sorted(usage_by_day.items()):
            months.setdefault(month_start(d), ([], []))[1].append((d, [str(f) for f in files]))
        stage = layout.staging(run_id)
        stage.mkdir(parents=True)
        elements = [(m, ev, us) for m, (ev, us) in sorted(months.items())]
        with beam.Pipeline(options=pipeline_options(config.beam_args)) as p:
            slices = p | "ListMonths" >> beam.Create(elements, reshuffle=False) | "ReadMonth" >> beam.ParDo(_ReadMonthFn())
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
                _WriteStagedFn(str(stage), "customer_months", "month", "customer_id"))
            _ = facts.customer_lifetime | "WriteCustomerLifetime" >> beam.ParDo(
                _WriteStagedFn(str(stage), "customer_lifetime", "as_of", "customer_id"))
            _ = (pre.revenue_daily | "KeyRevenueDaily" >> beam.Map(lambda table: (0, table))
                 | "WriteRevenueDaily" >> beam.ParDo(_WriteStagedFn(str(stage), "revenue_daily", "month", "date")))
            _ = ((pre.fx_missing, replayed.fx_missing) | "AllFxMissing" >> beam.Flatten()
                 | "CollectFxMissing" >> beam.combiners.ToList()
                 | "RecordFxMissing" >> beam.ParDo(_RecordFn(str(stage / "fx_missing.json"))))  # fmt: skip
        missing = json.loads((stage / "fx_missing.json").read_text())
        if missing:
            missing_currency, day = missing[0]
            more = f" (and {len(missing) - 1} more currency-days)" if len(missing) > 1 else ""
            raise ConfigError(f"no FX rate for {missing_currency} -> {currency} on or before {day}{more}; "
                              "add it to the FX file (--fx-rates)")  # fmt: skip
        replace = []
        for table in DERIVED_TABLES:
            staged = stage / table
            staged.mkdir(parents=True, exist_ok=True)
            replace.append((staged, layout.table(table)))
        lake.commit(layout, run_id, [], [], [], replace_dirs=replace)
    cm = lake.read_table(layout, "customer_months", ["customer_id", "month", "mrr"])
    at = cm.filter(pc.equal(cm["month"], pa.scalar(month_start(as_of), pa.date32())))
    positive = at.filter(pc.greater(at["mrr"], pa.scalar(0, schemas.MONEY).cast(schemas.MONEY)))
    result = MetricsResult(
        run_id=run_id, as_of=as_of, reporting_currency=currency, customer_months=cm.num_rows,
        customers=len(pc.unique(cm["customer_id"])), months=len(pc.unique(cm["month"])),
        mrr_at_as_of=pc.sum(at["mrr"]).as_py() if at.num_rows else 0, active_customers_at_as_of=positive.num_rows,
        seconds=round(time.monotonic() - started, 3),
    )  # fmt: skip
    if write_run_manifest:
        write_manifest(layout, run_id, "metrics", {
            "config": config.describe(), "customer_months": result.customer_months,
            "customers": result.customers, "months": result.months, "mrr_at_as_of": str(result.mrr_at_as_of),
            "seconds": result.seconds,
        })  # fmt: skip
    return result


class _WriteLateFn(beam.DoFn):
    def __init__(self, table_dir: str):
        self.table_dir = table_dir
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
        written = lake.write_partitioned(late, Path(self.table_dir), "month",
                                         f"late-{uuid.uuid4().hex}.parquet", [("customer_id", "ascending")])  # fmt: skip
        self.written.inc(rows)
        yield from (str(p) for p in written)


class WriteLateEvents(beam.PTransform):
    """Sink for ``RouteLateEvents``' ``too_late`` output: the lake's ``late_events/`` table (one file per element)."""

    def __init__(self, layout: DataLayout):
        super().__init__()
        self.table_dir = str(layout.table("late_events"))

    def expand(self, too_late):
        return too_late | "WriteLateEvents" >> beam.ParDo(_WriteLateFn(self.table_dir))
