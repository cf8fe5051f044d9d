"""`revenue metrics`: the lake's events/ and usage/ -> customer_months/, customer_lifetime/, revenue_daily/.

Memory is bounded by one month of events and one customer shard, never by the lake: data moves
between the Beam stages as staged Parquet files (under the lake's ``_staging/<run>/``, beside the
tables and in the same store, local or object storage, so workers that share only the lake's
storage can run it); shuffles carry file names. All lake I/O goes through ``pipelines.store``.

    ListMonths -> ReadMonth (one calendar month, pinned Delta versions)
      -> StageMonth: pre-aggregate per customer-month (Arrow), convert payments once;
         write (shard, month) partial and subscription files, and the month's revenue_daily
      -> CalendarMonthWindows (event time) + GroupByKey: a shard's files of one month
      -> MergeMonth -> GlobalWindow -> CoGroupByKey by shard
      -> ShardFacts: one shard's customers at a time: subscription replay, movements,
         customer_months and customer_lifetime files

A run is *incremental* when the derived tables were last written by a complete metrics run
whose settings (reporting currency, FX table) match and whose as-of date is in the same month,
not later: it recomputes only the customers that changed (new events or usage in the lake's
commits since that run, events that the moving as-of date now includes, and customers whose
subscription state changes by itself in between, e.g. a cancellation at period end), each from
its full history, and rewrites only the month partitions those changes reach. Otherwise, or
with ``--full-refresh``, every derived table is rebuilt. Both give identical tables.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.transforms import window

from pipelines import lake
from pipelines.beam_options import passes, pipeline_options, worker_processes_runner
from pipelines.config import RunConfig
from pipelines.layout import DataLayout
from pipelines.manifest import new_run_id, write_manifest
from pipelines.store import LakeStore
from transforms import schemas
from transforms.calendar import CalendarMonthWindows, month_start, months_between
from transforms.errors import ConfigError, InputError
from transforms.metrics import MonthSlice, month_of_timestamp, month_timestamp, shard_facts, stage_month
from transforms.revenue import METRICS_EVENTS, METRICS_USAGE, PARTIAL, merge_partials

log = logging.getLogger(__name__)

SHARD_ROWS = 250_000  # lake rows (events + usage) per customer shard of a full rebuild: bounds ShardFacts' memory
SLICE_ROWS = 100_000  # lake rows per month slice (whole days) read and pre-aggregated at once
STATE_KEY = "metrics_state"  # commit metadata: what the derived tables were computed from
# more changed customers than this share of all (in a lake of at least SHARE_RULE_CUSTOMERS): a full
# rebuild is cheaper than reading most histories customer by customer
MAX_INCREMENTAL_SHARE = 0.25
SHARE_RULE_CUSTOMERS = 1000


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
    mode: str = "full"  # full, incremental or unchanged
    reason: str = ""
    customers_recomputed: int = 0
    rows_read: int = 0  # events and usage rows read from the lake: the recomputed customers' history
    day_rows_read: int = 0  # events read for the revenue_daily days an incremental run recomputes
    months_rewritten: list = field(default_factory=list)
    shards: int = 0  # customer shards computed (1 in an incremental run; 0 when unchanged)
    workers: int = 0  # worker processes that computed them


@dataclass(frozen=True)
class MetricsPlan:
    mode: str  # "full", "incremental" or "unchanged"
    reason: str
    # incremental: the customers recomputed from their full history; a full rebuild for many changed
    # customers: those (the only ones whose rows can differ from the previous run's)
    customers: tuple[str, ...] = ()
    from_month: dt.date | None = None  # incremental: the first customer_months partition that can change
    daily_days: tuple[dt.date, ...] = ()  # incremental: days whose revenue_daily rows are recomputed
    rewrite_lifetime: bool = False
    customer_share: float = 1.0  # incremental: the recomputed customers' share of all (sizes month slices)


def fx_digest(config: RunConfig) -> str:
    rows = config.fx.rows() if config.fx is not None else []
    text = "\n".join(f"{d.isoformat()},{c},{r}" for d, c, r in rows)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _state(config: RunConfig, pinned: dict) -> dict:
    return {"events_version": pinned.get("events"), "usage_version": pinned.get("usage"),
            "as_of": config.as_of.isoformat(), "reporting_currency": config.reporting_currency,
            "fx": fx_digest(config)}  # fmt: skip


def previous_state(layout: DataLayout) -> tuple[dict | None, str]:
    """The settings and pinned versions of the last metrics run, if it committed every derived table."""
    metas = [lake.commit_metadata(layout, t) for t in schemas.DERIVED_TABLES]
    states = {m.get(STATE_KEY) for m in metas}
    runs = {m.get("run_id") for m in metas}
    if None in states:
        return None, "no earlier metrics run recorded on every derived table"
    if len(states) != 1 or len(runs) != 1:
        return None, "the derived tables were last written by different runs (an interrupted run)"
    return json.loads(states.pop()), ""


# ------------------------------------------------------------------ what changed


def _duck():
    import duckdb

    con = duckdb.connect()
    con.execute("set threads to 2")
    return con


def _scan(store: LakeStore, files: list, schema: pa.Schema | None = None):
    """A pyarrow dataset over some data files of the lake's store (paths or ``(path, size)``)."""
    return store.dataset(files, schema)


def _changed_rows(layout: DataLayout, table: str, old: int | None, new: int | None, as_of: dt.date):
    """Rows (customer_id, day, first_day) that differ between two versions of events or usage:
    rows of the files the commits in between added as a data change whose event id no file they
    removed holds, and the reverse. A compaction (``dataChange=false``: the stream's after its
    batches, ``revenue maintain``'s) changes no row and is skipped, so the cost follows the rows
    appended since ``old``, not the partitions compacted meanwhile. ``first_day``: the earliest
    day the row can affect."""
    if new is None or old == new:
        return []
    if old is None:
        added, removed = sorted(f for files in lake.files_by_partition(layout, table, new).values() for f in files), []
    else:
        appended, dropped = lake.data_changes(layout, table, old, new)
        added, removed = sorted(set(appended) - set(dropped)), sorted(set(dropped) - set(appended))
    if not added and not removed:
        return []
    effective = "effective_at" if table == "events" else "occurred_at"
    select = (f"select event_id, customer_id, cast(occurred_at as date) as day, "
              f"cast(least(occurred_at, coalesce({effective}, occurred_at)) as date) as first_day from")  # fmt: skip
    empty = "select null::varchar as event_id, null::varchar as customer_id, null::date as day, null::date as first_day where false"
    con = _duck()
    columns = sorted({"event_id", "customer_id", "occurred_at", effective})
    for name, files in (("added_rows", added), ("removed_rows", removed)):
        if files:
            con.register(name, _scan(layout.store, files).to_table(columns=columns))
    a = f"{select} added_rows" if added else empty
    r = f"{select} removed_rows" if removed else empty
    rows = con.execute(f"""
        with a as ({a}), r as ({r})
        select customer_id, day, first_day from a where event_id not in (select event_id from r)
        union all
        select customer_id, day, first_day from r where event_id not in (select event_id from a)
    """).fetchall()  # fmt: skip
    con.close()
    return [row for row in rows if row[1] <= as_of]


def _window_rows(layout: DataLayout, table: str, version: int | None, after: dt.date, through: dt.date):
    """Rows already in the lake that a moved as-of date now includes (event days in (after, through])."""
    parts = lake.files_by_partition(layout, table, version) if version is not None else {}
    files = [f for day, fs in parts.items() if after < day <= through for f in fs]
    if not files:
        return []
    effective = "effective_at" if table == "events" else "occurred_at"
    con = _duck()
    con.register("window_rows", _scan(layout.store, files).to_table(columns=sorted({"customer_id", "occurred_at", effective})))
    rows = con.execute(f"select customer_id, cast(occurred_at as date), cast(least(occurred_at, "
                       f"coalesce({effective}, occurred_at)) as date) from window_rows").fetchall()  # fmt: skip
    con.close()
    return rows


def plan_run(config: RunConfig, pinned: dict) -> MetricsPlan:
    """Full rebuild or the incremental work since the last metrics run (from the lake's commits)."""
    layout, as_of = config.layout, config.as_of
    if config.full_refresh:
        return MetricsPlan("full", "--full-refresh")
    previous, why = previous_state(layout)
    if previous is None:
        return MetricsPlan("full", why)
    if previous.get("reporting_currency") != config.reporting_currency or previous.get("fx") != fx_digest(config):
        return MetricsPlan("full", "the reporting currency or the FX table changed")
    old_as_of = dt.date.fromisoformat(previous["as_of"])
    if as_of < old_as_of:
        return MetricsPlan("full", f"the as-of date moved back ({old_as_of} -> {as_of})")
    if month_start(as_of) != month_start(old_as_of):
        return MetricsPlan("full", f"a new as-of month ({old_as_of:%Y-%m} -> {as_of:%Y-%m}): every customer gets a row")
    try:
        changed = [r for t in ("events", "usage")
                   for r in _changed_rows(layout, t, previous.get(f"{t}_version"), pinned.get(t), as_of)]  # fmt: skip
    except Exception as exc:  # the old version's log is gone (vacuumed past its retention)
        log.warning("cannot read what changed since the last metrics run (%s): full rebuild", exc)
        return MetricsPlan("full", "the lake's history since the last metrics run is no longer readable")
    daily = {day for _, day, _ in changed}
    if as_of > old_as_of:
        moved = [r for t in ("events", "usage")
                 for r in _window_rows(layout, t, pinned.get(t), old_as_of, as_of)]  # fmt: skip
        changed += moved
        daily |= {day for _, day, _ in moved}
        end = dt.datetime.combine(as_of + dt.timedelta(days=1), dt.time(), dt.UTC)
        life = lake.read_table(layout, "customer_lifetime", ["customer_id", "next_change_at"],
                               filter=pc.field("next_change_at") < pa.scalar(end, schemas.TS))  # fmt: skip
        changed += [(c, as_of, month_start(as_of)) for c in life["customer_id"].to_pylist()]
    customers = sorted({c for c, _, _ in changed})
    if not customers and as_of == old_as_of:
        return MetricsPlan("unchanged", "no new events or usage since the last metrics run")
    known = lake.row_count(layout, "customer_lifetime")
    if known >= SHARE_RULE_CUSTOMERS and len(customers) > MAX_INCREMENTAL_SHARE * known:
        # cheaper rebuilt whole; the other customers' rows come out as they were, so the warehouse's
        # load still compares only these customers' (see lake.recomputed_record)
        return MetricsPlan("full", f"{len(customers):,} of {known:,} customers changed", tuple(customers))
    first = min((month_start(f) for _, _, f in changed), default=month_start(as_of))
    return MetricsPlan("incremental", f"{len(customers):,} customers changed", tuple(customers), first,
                       tuple(sorted(daily)), rewrite_lifetime=True,
                       customer_share=min(1.0, len(customers) / known) if known else 1.0)  # fmt: skip


# ------------------------------------------------------------------ Beam stages


def _read_files(store: LakeStore, files: list, schema: pa.Schema,
                customers: tuple[str, ...] | None = None) -> pa.Table:  # fmt: skip
    """Rows of some data files of one committed version (listed from its log), typed by ``schema``
    (only its columns are read; a column a file lacks reads as nulls); with ``customers``, only
    their rows (the filter is pushed into the scan)."""
    if customers is None:
        return store.read_rows(files, schema)
    return store.read_rows(files, schema, "customer_id", list(customers))


class _ReadMonthFn(beam.DoFn):
    """``(month, data files of events and usage, customers or None, event files of some days)`` ->
    a ``MonthSlice``. The files come from the pinned versions' logs (only the month's partitions).
    With customers (an incremental run), only their rows, plus every event of the listed days'
    files for revenue_daily."""

    def __init__(self, store: LakeStore):
        self.store = store
        self.rows_read = beam.metrics.Metrics.counter("metrics", "lake_rows_read")
        self.day_rows_read = beam.metrics.Metrics.counter("metrics", "lake_day_rows_read")

    def process(self, element):
        month, index, files, customers, day_files = element
        tables = {}
        for table, schema in (("events", METRICS_EVENTS), ("usage", METRICS_USAGE)):
            tables[table] = _read_files(self.store, files[table], schema, customers)
            self.rows_read.inc(tables[table].num_rows)
        daily = None
        if customers is not None:
            daily = _read_files(self.store, day_files, METRICS_EVENTS)
            self.day_rows_read.inc(daily.num_rows)
        yield MonthSlice(month, tables["events"], tables["usage"], daily, index)


def _write(store: LakeStore, table: pa.Table, path: str) -> str:
    return store.write_parquet(table, path, **lake.PARQUET_OPTIONS)


class _StageMonthFn(beam.DoFn):
    """A month slice -> staged (shard, month) partial and subscription files, the month's revenue_daily file."""

    def __init__(self, store: LakeStore, stage: str, run_id: str, config: RunConfig, shards: int, daily_root: str):
        self.store, self.stage, self.run_id, self.shards, self.daily_root = store, stage, run_id, shards, daily_root
        self.fx, self.currency, self.as_of = config.fx, config.reporting_currency, config.as_of

    def process(self, element: MonthSlice):
        staged = stage_month(element, self.fx, self.currency, self.as_of, self.shards)
        for pair in staged.missing:
            yield beam.pvalue.TaggedOutput("fx_missing", pair)
        if staged.daily.num_rows:
            lake.write_partitioned(staged.daily, self.daily_root, "month",
                                   f"part-{self.run_id}-m{element.month:%Y%m}-s{element.index:03d}.parquet",
                                   [("date", "ascending"), ("currency", "ascending")], self.store)  # fmt: skip
        name = f"{element.month.isoformat()}-s{element.index:03d}.parquet"
        store = self.store
        for shard, rows in staged.partials:
            for month, piece in _by_month(rows):  # a slice of an incremental run can span months
                path = _write(store, piece, store.join(self.stage, "partials", f"shard-{shard:04d}",
                                                       f"{month.isoformat()}-from-{name}"))  # fmt: skip
                yield window.TimestampedValue((shard, path), month_timestamp(month))
        for shard, piece in staged.subscriptions:
            path = _write(store, piece, store.join(self.stage, "subs", f"shard-{shard:04d}", name))
            yield beam.pvalue.TaggedOutput("subscriptions", (shard, path))
        del staged
        pa.default_memory_pool().release_unused()


def _by_month(partial: pa.Table):
    """``(month, rows)`` for each month of a pre-aggregated partial, in month order."""
    months = sorted(pc.unique(partial["month"]).to_pylist())
    if len(months) == 1:
        yield months[0], partial
        return
    for month in months:
        yield month, partial.filter(pc.equal(partial["month"], pa.scalar(month, pa.date32())))


class _MergeMonthFn(beam.DoFn):
    """One calendar-month window's partial files of a shard -> one file (merged when there are several)."""

    def __init__(self, store: LakeStore, stage: str):
        self.store, self.stage = store, stage

    def process(self, element, win=beam.DoFn.WindowParam):
        shard, paths = element
        paths = sorted(paths)
        if len(paths) == 1:
            yield shard, paths[0]
            return
        month = month_of_timestamp(win.start)
        store = self.store
        merged = merge_partials(store.read_parquet(p).cast(PARTIAL) for p in paths)
        path = store.join(self.stage, "partials", f"shard-{shard:04d}", f"{month.isoformat()}-merged.parquet")
        yield shard, _write(store, merged, path)


class _ShardFactsFn(beam.DoFn):
    """One customer shard's files -> its customer_months and customer_lifetime data files."""

    def __init__(self, store: LakeStore, run_id: str, config: RunConfig, months_root: str, lifetime_root: str):
        self.store, self.run_id, self.months_root, self.lifetime_root = store, run_id, months_root, lifetime_root
        self.fx, self.currency, self.as_of = config.fx, config.reporting_currency, config.as_of

    def process(self, element):
        from transforms.fx import MissingFxRate

        shard, files = element
        partials = [self.store.read_parquet(p).cast(PARTIAL) for p in sorted(files["partials"])]
        subs = [self.store.read_parquet(p) for p in sorted(files["subscriptions"])]
        try:
            facts = shard_facts(partials, subs, self.fx, self.as_of, self.currency)
        except MissingFxRate as exc:
            yield beam.pvalue.TaggedOutput("fx_missing", (exc.currency, exc.day))
            return
        if facts is None:
            return
        months, lifetime = facts
        name = f"part-{self.run_id}-shard{shard:04d}.parquet"  # letters between digit runs: nothing card-like
        lake.write_partitioned(months, self.months_root, "month", name, [("customer_id", "ascending")], self.store)
        lake.write_partitioned(lifetime, self.lifetime_root, "as_of", name, [("customer_id", "ascending")], self.store)
        count = months.num_rows
        del months, lifetime, facts, partials, subs
        pa.default_memory_pool().release_unused()  # one shard at a time: give its memory back before the next
        yield count


class _RecordFn(beam.DoFn):
    def __init__(self, store: LakeStore, path: str):
        self.store, self.path = store, path

    def process(self, items):
        self.store.put_bytes(self.path, json.dumps(sorted({(c, d.isoformat()) for c, d in items})).encode())
        yield len(items)


def _lake_rows(layout: DataLayout, pinned: dict) -> int:
    return sum(lake.row_count(layout, t, pinned[t]) for t in ("events", "usage") if pinned.get(t) is not None)


def _workers(config: RunConfig, rows: int) -> int:
    """Worker processes for a full rebuild of ``rows`` lake rows: ``--metrics-workers`` when the lake
    holds more than one shard and the user chose no runner or running mode of their own (Beam
    arguments), else 1. The shards are independent and their replays Python-bound, so N workers
    take about 1/N of the time on N cores; each holds its own shard, so memory grows by a worker's
    (about 650-750 MB at 10M events here)."""
    chosen = passes(config.beam_args, "--runner", "--direct_num_workers", "--direct_running_mode")
    return config.metrics_workers if rows > SHARD_ROWS and not chosen else 1


def _shards(rows: int, requested: int | None, workers: int) -> int:
    if requested:
        return requested
    return max(workers, math.ceil(rows / SHARD_ROWS))


def _compute(config: RunConfig, run_id: str, elements: list, shards: int, stage: str,
             roots: dict[str, str], workers: int = 1) -> tuple[list, int, int]:  # fmt: skip
    """Run the Beam pipeline; returns the (currency, day) pairs with no FX rate, the lake rows read for
    the customers recomputed, and those read for the revenue_daily days recomputed. With several
    ``workers``, FnApiRunner runs the bundles in that many processes: the month list is reshuffled
    so that its slices, like the shards after the grouping, spread over them."""
    store = config.layout.store
    worker_log = None
    if workers > 1:
        config.layout.runs_dir.mkdir(parents=True, exist_ok=True)
        worker_log = config.layout.runs_dir / f"{run_id}-metrics-workers.log"
        runner, options = worker_processes_runner(workers, worker_log)
        p = beam.Pipeline(runner=runner, options=options)
    else:
        p = beam.Pipeline(options=pipeline_options(config.beam_args))
    slices = (p | "ListMonths" >> beam.Create(elements, reshuffle=workers > 1)
              | "ReadMonth" >> beam.ParDo(_ReadMonthFn(store)))  # fmt: skip
    staged = slices | "StageMonth" >> beam.ParDo(
        _StageMonthFn(store, stage, run_id, config, shards, roots["revenue_daily"])
    ).with_outputs("subscriptions", "fx_missing", main="partials")
    monthly = (
        staged.partials
        | "CalendarMonths" >> beam.WindowInto(CalendarMonthWindows())
        | "GroupShardMonth" >> beam.GroupByKey()
        | "MergeMonth" >> beam.ParDo(_MergeMonthFn(store, stage))
        | "GlobalWindow" >> beam.WindowInto(window.GlobalWindows())
    )
    facts = ({"partials": monthly, "subscriptions": staged.subscriptions}
             | "GroupByShard" >> beam.CoGroupByKey()
             | "ShardFacts" >> beam.ParDo(_ShardFactsFn(store, run_id, config, roots["customer_months"],
                                                        roots["customer_lifetime"]))
             .with_outputs("fx_missing", main="rows"))  # fmt: skip
    _ = ((staged.fx_missing, facts.fx_missing) | "AllFxMissing" >> beam.Flatten()
         | "CollectFxMissing" >> beam.combiners.ToList()
         | "RecordFxMissing" >> beam.ParDo(_RecordFn(store, store.join(stage, "fx_missing.json"))))  # fmt: skip
    quiet = logging.getLogger("apache_beam.runners.portability.fn_api_runner.fn_runner")
    level = quiet.level
    if worker_log is not None:
        quiet.setLevel(logging.ERROR)  # its warning about the running mode (see worker_processes_runner)
    try:
        result = p.run()
        result.wait_until_finish()
    except Exception as exc:
        if worker_log is not None and worker_log.exists() and worker_log.stat().st_size:
            exc.add_note(f"worker processes' output: {worker_log}")
        raise
    finally:
        quiet.setLevel(level)
    if worker_log is not None:
        worker_log.unlink(missing_ok=True)

    def counter(name: str) -> int:
        found = result.metrics().query(beam.metrics.MetricsFilter().with_name(name))["counters"]
        return sum(c.committed or c.attempted or 0 for c in found)

    missing = json.loads(store.get_bytes(store.join(stage, "fx_missing.json")))
    return missing, counter("lake_rows_read"), counter("lake_day_rows_read")


# ------------------------------------------------------------------ the driver


def _day_chunks(days: list[dt.date], rows: dict, limit: int) -> list[list[dt.date]]:
    """Consecutive days grouped so that each group holds at most ``limit`` rows (one day at least)."""
    chunks, current, size = [], [], 0
    for day in days:
        if current and size + rows.get(day, 0) > limit:
            chunks.append(current)
            current, size = [], 0
        current.append(day)
        size += rows.get(day, 0)
    if current:
        chunks.append(current)
    return chunks


def _month_elements(layout: DataLayout, pinned: dict, as_of: dt.date, plan: MetricsPlan) -> list:
    """Elements ``(month, slice, files, customers, day files)``: slices of whole days on or before the
    as-of date holding at most SLICE_ROWS lake rows each (memory). A full rebuild cuts each calendar
    month into slices of its own; an incremental run, which keeps only the changed customers' rows,
    lets a slice run on into the next months (24 months of a few hundred customers are one read
    and one pre-aggregation, not 24), and ``month`` is the slice's first month. Either way the
    pre-aggregated rows reach the calendar-month windows month by month (``_StageMonthFn``)."""
    rows: dict = {}
    sizes: dict = {}  # file sizes from the log: readers skip a HEAD request per file on an object store
    parts = {t: lake.files_by_partition(layout, t, pinned[t], rows, sizes) if pinned.get(t) is not None else {}
             for t in ("events", "usage")}  # fmt: skip
    parts = {t: {d: [(f, sizes[f]) for f in fs] for d, fs in by_day.items()} for t, by_day in parts.items()}
    days = sorted({d for t in parts for d in parts[t] if d <= as_of})
    if not days:
        raise InputError(f"no events on or before the as-of date {as_of}")
    customers = plan.customers if plan.mode == "incremental" else None
    if customers is not None:
        # what a slice holds: every row of the days whose revenue_daily is recomputed, and of the
        # other days about the recomputed customers' share (their rows only are kept)
        recomputed = set(plan.daily_days)
        rows = {d: n if d in recomputed else math.ceil(n * plan.customer_share) for d, n in rows.items()}
    if customers is None:  # a full rebuild: each month on its own (its slices hold every customer's rows)
        chunks = [(month, index, chunk) for month in sorted({month_start(d) for d in days})
                  for index, chunk in enumerate(_day_chunks([d for d in days if month_start(d) == month],
                                                            rows, SLICE_ROWS))]  # fmt: skip
    else:  # the changed customers' rows of several months fit one slice: one read, one pre-aggregation
        chunks = [(month_start(chunk[0]), index, chunk) for index, chunk in enumerate(_day_chunks(days, rows, SLICE_ROWS))]
    elements = []
    for month, index, chunk in chunks:
        days_in = set(chunk)
        files = {t: [f for d in chunk for f in parts[t].get(d, [])] for t in parts}
        day_files = [f for d in plan.daily_days if d in days_in for f in parts["events"].get(d, [])]
        if customers is not None and not customers and not day_files:
            continue
        elements.append((month, index, files, customers, day_files))
    return elements


def _read_staged(store: LakeStore, root: str, partition: str, kind) -> pa.Table | None:
    import pyarrow.dataset as ds

    files = [f.path for f in store.files(root) if f.base_name.endswith(".parquet")]
    if not files:
        return None
    data = ds.dataset(files, format="parquet", filesystem=store.filesystem,
                      partitioning=ds.partitioning(pa.schema([pa.field(partition, kind)]), flavor="hive"),
                      partition_base_dir=root)  # fmt: skip
    return data.to_table()


def _commit_incremental(config: RunConfig, run_id: str, plan: MetricsPlan, out: dict[str, str],
                        meta: dict, read_versions: dict[str, int]) -> tuple[dict, list]:  # fmt: skip
    """Rewrite only what changed: the customer_months partitions from ``plan.from_month`` (other
    customers' rows kept, the changed customers' rows replaced), customer_lifetime (the changed
    customers' rows replaced, every row at the new as-of date) and the revenue_daily months
    holding a recomputed day. The three tables' files are written side by side (Arrow's reads and
    the Parquet encoder release the GIL); then one commit per table, in the same order as a full run."""
    from concurrent.futures import ThreadPoolExecutor

    layout, as_of, store = config.layout, config.as_of, config.layout.store
    changed = pa.array(plan.customers, pa.string())
    rewritten = list(months_between(plan.from_month, month_start(as_of)))
    daily_months = sorted({month_start(d) for d in plan.daily_days})
    per_customer = {**meta, **lake.recomputed_record(plan.customers)}  # what the warehouse's load compares

    def customer_months() -> list[str]:
        schema = schemas.with_partition_column("customer_months")
        new_rows = _read_staged(store, out["customer_months"], "month", pa.date32())
        files = []
        for month in rewritten:
            existing = lake.read_table(layout, "customer_months",
                                       filter=pc.field("month") == pa.scalar(month, pa.date32()))  # fmt: skip
            keep = existing.filter(pc.invert(pc.is_in(existing["customer_id"], changed))).select(schema.names)
            parts = [keep.cast(schema)]
            if new_rows is not None:
                mine = new_rows.filter(pc.equal(new_rows["month"], pa.scalar(month, pa.date32())))
                parts.append(mine.select(schema.names).cast(schema))
            files += lake.write_partitioned(pa.concat_tables(parts), layout.table_path("customer_months"), "month",
                                            f"part-{run_id}-inc.parquet", [("customer_id", "ascending")], store)  # fmt: skip
        return files

    def customer_lifetime() -> list[str]:  # one partition (the as-of date), rewritten whole (a row per customer)
        schema = schemas.with_partition_column("customer_lifetime")
        existing = lake.read_table(layout, "customer_lifetime")
        keep = existing.filter(pc.invert(pc.is_in(existing["customer_id"], changed)))
        keep = keep.set_column(keep.schema.get_field_index("as_of"), "as_of",
                               pa.repeat(pa.scalar(as_of, pa.date32()), keep.num_rows))  # fmt: skip
        parts = [keep.select(schema.names).cast(schema)]
        new_life = _read_staged(store, out["customer_lifetime"], "as_of", pa.date32())
        if new_life is not None:
            parts.append(new_life.select(schema.names).cast(schema))
        return lake.write_partitioned(pa.concat_tables(parts), layout.table_path("customer_lifetime"), "as_of",
                                      f"part-{run_id}-inc.parquet", [("customer_id", "ascending")], store)  # fmt: skip

    def revenue_daily() -> list[str]:  # the months of the recomputed days
        schema = schemas.with_partition_column("revenue_daily")
        days = pa.array(plan.daily_days, pa.date32())
        new_daily = _read_staged(store, out["revenue_daily"], "month", pa.date32())
        files = []
        for month in daily_months:
            existing = lake.read_table(layout, "revenue_daily",
                                       filter=pc.field("month") == pa.scalar(month, pa.date32()))  # fmt: skip
            parts = [existing.filter(pc.invert(pc.is_in(existing["date"], days))).select(schema.names).cast(schema)]
            if new_daily is not None:
                mine = new_daily.filter(pc.equal(new_daily["month"], pa.scalar(month, pa.date32())))
                parts.append(mine.select(schema.names).cast(schema))
            files += lake.write_partitioned(pa.concat_tables(parts), layout.table_path("revenue_daily"), "month",
                                            f"part-{run_id}-inc.parquet",
                                            [("date", "ascending"), ("currency", "ascending")], store)  # fmt: skip
        return files

    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="metrics-rewrite") as pool:
        futures = [pool.submit(write) for write in (customer_months, customer_lifetime, revenue_daily)]
        cm_files, lt_files, rd_files = [f.result() for f in futures]
    committed = {
        "customer_months": lake.commit(layout, "customer_months", cm_files, run_id, metadata=per_customer,
                                       replace_partitions=rewritten, always=True,
                                       read_version=read_versions.get("customer_months")),
        "customer_lifetime": lake.commit(layout, "customer_lifetime", lt_files, run_id, mode="overwrite",
                                         metadata=per_customer, read_version=read_versions.get("customer_lifetime")),
        "revenue_daily": lake.commit(layout, "revenue_daily", rd_files, run_id, metadata=meta,
                                     replace_partitions=daily_months, always=True,
                                     read_version=read_versions.get("revenue_daily")),
    }  # fmt: skip
    return committed, rewritten


def run_metrics(config: RunConfig, run_id: str | None = None, write_run_manifest: bool = True,
                shards: int | None = None) -> MetricsResult:  # fmt: skip
    """customer_months, customer_lifetime and revenue_daily for ``config.as_of`` (or the lake's latest
    event day): incrementally when possible (see the module doc), else rebuilt whole."""
    started = time.monotonic()
    layout, currency = config.layout, config.reporting_currency
    run_id = run_id or new_run_id()
    with lake.lake_lock(layout, (lake.DERIVED_SCOPE,)):  # ingests may commit meanwhile: it reads pinned versions
        config = config.resolve_as_of()
        as_of = config.as_of
        pinned = lake.versions(layout, ("events", "usage"))  # this run reads exactly these versions
        read_versions = lake.versions(layout, schemas.DERIVED_TABLES)  # and commits on top of these
        plan = plan_run(config, pinned)
        log.info("metrics: %s (%s)", plan.mode, plan.reason)
        meta = {STATE_KEY: json.dumps(_state(config, pinned), sort_keys=True)}
        committed, rewritten, rows_read, day_rows_read, n_shards, workers = {}, [], 0, 0, 0, 0
        if plan.mode == "unchanged":
            committed = lake.versions(layout, schemas.DERIVED_TABLES)
        else:
            elements = _month_elements(layout, pinned, as_of, plan)
            store, stage = layout.store, layout.staging_path(run_id, lake.DERIVED_SCOPE)
            incremental = plan.mode == "incremental"
            out = ({t: store.join(stage, "out", t) for t in schemas.DERIVED_TABLES} if incremental
                   else {t: layout.table_path(t) for t in schemas.DERIVED_TABLES})  # fmt: skip
            rows = 0 if incremental else _lake_rows(layout, pinned)
            workers = 1 if incremental else _workers(config, rows)
            n_shards = 1 if incremental else _shards(rows, shards or config.shards, workers)
            log.info("metrics: %d shards, %d worker processes", n_shards, workers)
            with lake.run_writes(layout, run_id, schemas.DERIVED_TABLES) as committed_tables:
                missing, rows_read, day_rows_read = _compute(config, run_id, elements, n_shards, stage, out, workers)
                if missing:
                    missing_currency, day = missing[0]
                    more = f" (and {len(missing) - 1} more currency-days)" if len(missing) > 1 else ""
                    raise ConfigError(f"no FX rate for {missing_currency} -> {currency} on or before {day}{more}; "
                                      "add it to the FX file (--fx-rates)")  # fmt: skip
                if incremental:
                    committed, rewritten = _commit_incremental(config, run_id, plan, out, meta, read_versions)
                    committed_tables.update(schemas.DERIVED_TABLES)
                else:
                    # each derived table replaced whole, one commit each, all carrying this run's state: a
                    # kill between them leaves them from different runs, and the next run rebuilds them all
                    # a rebuild for many changed customers records them (see plan_run); others record none
                    recorded = {**meta, **lake.recomputed_record(plan.customers)} if plan.customers else meta
                    for table in schemas.DERIVED_TABLES:
                        table_meta = recorded if table in lake.RECOMPUTED_TABLES else meta
                        committed[table] = lake.commit(layout, table, lake.run_files(layout, table, run_id), run_id,
                                                       mode="overwrite", metadata=table_meta,
                                                       read_version=read_versions.get(table))  # fmt: skip
                        committed_tables.add(table)
            store.delete_dir(stage)
    cm = lake.read_table(layout, "customer_months", ["customer_id", "month", "mrr"],
                         version=committed["customer_months"],
                         filter=pc.field("month") == pa.scalar(month_start(as_of), pa.date32()))  # fmt: skip
    life = lake.read_table(layout, "customer_lifetime", ["customer_id", "first_event_month"],
                           version=committed["customer_lifetime"])  # fmt: skip
    positive = cm.filter(pc.greater(cm["mrr"], pa.scalar(0, schemas.MONEY).cast(schemas.MONEY)))
    first = pc.min(life["first_event_month"]).as_py() if life.num_rows else month_start(as_of)
    months = len(list(months_between(first, month_start(as_of))))
    result = MetricsResult(
        run_id=run_id, as_of=as_of, reporting_currency=currency,
        customer_months=lake.row_count(layout, "customer_months", committed["customer_months"]),
        customers=life.num_rows, months=months,
        mrr_at_as_of=pc.sum(cm["mrr"]).as_py() if cm.num_rows else 0, active_customers_at_as_of=positive.num_rows,
        seconds=round(time.monotonic() - started, 3), lake_versions={**pinned, **committed},
        mode=plan.mode, reason=plan.reason,
        customers_recomputed=len(plan.customers) if plan.mode == "incremental" else
        (life.num_rows if plan.mode == "full" else 0),
        rows_read=rows_read, day_rows_read=day_rows_read, months_rewritten=[m.isoformat() for m in rewritten],
        shards=n_shards, workers=workers,
    )  # fmt: skip
    if write_run_manifest:
        write_manifest(layout, run_id, "metrics", {
            "config": config.describe(), "lake_versions": result.lake_versions, "mode": result.mode,
            "reason": result.reason, "customers_recomputed": result.customers_recomputed,
            "rows_read": result.rows_read, "day_rows_read": result.day_rows_read,
            "months_rewritten": result.months_rewritten, "shards": result.shards, "workers": result.workers,
            "customer_months": result.customer_months,
            "customers": result.customers, "months": result.months, "mrr_at_as_of": str(result.mrr_at_as_of),
            "seconds": result.seconds,
        })  # fmt: skip
    return result


