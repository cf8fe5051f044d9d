"""The warehouse's copy of the lake (its ``lake`` schema), brought to the pinned Delta versions.

A warehouse carries the lake snapshot it was built from, so dbt reads one consistent version and
the published file needs nothing outside itself. Each row of ``lake.<table>`` keeps the Delta data
file it came from (``_file``, the path the Delta log names) and ``lake._files`` lists the files
loaded. A build brings the copy to the versions the run pinned:

- **incremental** (the build starts from a copy of the published warehouse): the files the pinned
  version names and the copy lacks are inserted; the rows of files the copy holds and the pinned
  version no longer names (a month rewritten by the metrics stage, an overwrite, a compaction by
  ``revenue maintain``) are deleted. Only the Delta log and the added files are read, so the cost
  follows the commits since the last build, not the lake; no earlier version's log or data file is
  needed (a vacuumed history is no obstacle). The deleted and inserted rows are then compared
  (``EXCEPT ALL`` both ways): the keys of rows that really changed go to ``lake.changed_customers``
  and ``lake.changed_days``, which the incremental dbt models recompute (a file rewritten with the
  same rows changes nothing). In ``customer_months`` and ``customer_lifetime``, which an
  incremental metrics run rewrites whole partitions of, only the rows of the customers that the
  metrics runs since the published build recorded in their commits as recomputed are compared
  (they copied every other customer's rows as they were); when a commit in between changed rows
  without that record (a full rebuild other than for many changed customers),
  every row is.
- **full** (``--full-refresh``, no compatible published warehouse, a changed dbt project, seed,
  FX table or reporting currency, a lake table recreated or rolled back): everything is loaded
  into an empty build and dbt builds every model from scratch.

A change of the as-of date alone also changes what the staging models let through (events up to the
as-of day, customer-months up to its month): the customers and days between the old and the new
date are added to the change tables. ``lake._files.new_in_build`` marks the rows this build added,
which the quality gate validates row by row.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from pipelines import lake
from pipelines.layout import DataLayout
from transforms import schemas

log = logging.getLogger(__name__)

LOAD_FORMAT = 1  # bump when the layout of the lake copy changes: the next build is then a full one
LAKE_SOURCES = ("events", "usage", "dead_letter", "customer_months", "customer_lifetime", "revenue_daily")
FILE_COLUMN = "_file"
MEMORY_LIMIT_ENV = "REVENUE_DUCKDB_MEMORY_LIMIT"
DEFAULT_MEMORY_LIMIT = "256MB"

# Which keys a changed row of a lake table puts in the change tables (what the marts recompute):
# (change table, key expression, rows that matter). Other tables (usage, dead_letter) feed no
# incremental mart: customer_months carries the usage the marts use.
CHANGE_KEYS = {
    "events": ("changed_customers", "customer_id", "event_type = 'customer.created'"),  # dim_customers' profile
    "customer_months": ("changed_customers", "customer_id", None),
    "customer_lifetime": ("changed_customers", "customer_id", None),
    "revenue_daily": ("changed_days", '"date"', None),
}
# columns left out of the row comparison: customer_lifetime's as_of is the run's as-of date, the
# same on every row, handled as an as-of change (below), not as a change of every customer
NOT_COMPARED = {"customer_lifetime": {"as_of"}}


@dataclass
class LoadResult:
    mode: str  # "full" or "incremental"
    reason: str  # why a full load, or "" for an incremental one
    files_added: dict[str, int] = field(default_factory=dict)
    files_removed: dict[str, int] = field(default_factory=dict)
    rows_added: dict[str, int] = field(default_factory=dict)
    rows_removed: dict[str, int] = field(default_factory=dict)
    rows_compared: dict[str, int] = field(default_factory=dict)  # old and new rows compared to find what changed
    changed_customers: int = 0
    changed_days: int = 0
    seconds: float = 0.0
    # the copy's views are this build's: an incremental load (same dbt project, FX table and currency:
    # the fingerprint) at the same as-of date, the one variable the views' SQL renders
    views_current: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def memory_limit() -> str:
    """DuckDB's memory limit for the build and for each of the gate's two connections (it spills to the
    build folder beyond it)."""
    return os.environ.get(MEMORY_LIMIT_ENV, DEFAULT_MEMORY_LIMIT)


def connect(path: Path, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(path), read_only=read_only, config={"memory_limit": memory_limit()})
    return con


def published_state(warehouse: Path) -> dict | None:
    """The load state recorded in a published warehouse, or None (absent, older release, unreadable)."""
    if not warehouse.exists():
        return None
    try:
        con = connect(warehouse, read_only=True)
    except duckdb.Error:
        return None
    try:
        rows = con.execute("select state from lake._load_state").fetchall()
    except duckdb.Error:
        return None
    finally:
        con.close()
    return json.loads(rows[0][0]) if rows else None


def _table_ids(layout: DataLayout, pinned: dict[str, int]) -> dict[str, str]:
    return {t: lake.open_table(layout, t, v).metadata().id for t, v in pinned.items() if t in LAKE_SOURCES}


def plan(layout: DataLayout, pinned: dict[str, int], fingerprint: str, full_refresh: bool) -> tuple[dict | None, str]:
    """``(published state, "")`` when the build can start from the published warehouse, else
    ``(None, why the build must load everything)``."""
    if full_refresh:
        return None, "--full-refresh"
    state = published_state(layout.warehouse)
    if state is None:
        return None, "no published warehouse with a lake load state"
    if state.get("format") != LOAD_FORMAT:
        return None, "the published warehouse was loaded by another release"
    if state.get("fingerprint") != fingerprint:
        return None, "the dbt project, its seeds, the FX table or the reporting currency changed"
    ids = _table_ids(layout, pinned)
    for table in LAKE_SOURCES:
        old = state["tables"].get(table)
        if old is None:
            continue  # a table first written since: all its files are new
        if table not in pinned:
            return None, f"lake table {table} is gone"
        if old["id"] != ids[table] or old["version"] > pinned[table]:
            return None, f"lake table {table} was recreated or rolled back"
    return state, ""


def _current_files(layout: DataLayout, table: str, version: int | None) -> pa.Table:
    """``file`` (path in the log), ``filename`` (absolute) and the typed partition value of every
    data file of one version (from the log: no data read)."""
    name, kind = schemas.PARTITION_COLUMNS[table]
    empty = pa.table({"file": pa.array([], pa.string()), "filename": pa.array([], pa.string()),
                      name: pa.array([], kind)})  # fmt: skip
    delta = lake.open_table(layout, table, version) if version is not None else None
    if delta is None:
        return empty
    actions = pa.table(delta.get_add_actions(flatten=True))
    if not actions.num_rows:
        return empty
    root = layout.table(table)
    files = actions["path"].to_pylist()
    return pa.table({"file": pa.array(files, pa.string()),
                     "filename": pa.array([str(root / f) for f in files], pa.string()),
                     name: actions[f"partition.{name}"].cast(kind)})  # fmt: skip


def _create_lake_tables(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("create schema if not exists lake")
    for table in LAKE_SOURCES:
        con.register("empty_source", schemas.with_partition_column(table).empty_table())
        con.execute(f'create table if not exists lake."{table}" as '
                    f"select *, cast(null as varchar) as {FILE_COLUMN} from empty_source limit 0")  # fmt: skip
        con.unregister("empty_source")
    con.execute("create table if not exists lake._files (table_name varchar, file varchar, new_in_build boolean)")
    con.execute("create table if not exists lake._load_state (state varchar)")
    con.execute("create or replace table lake.changed_customers (customer_id varchar)")
    con.execute('create or replace table lake.changed_days ("date" date)')


def _compared_columns(con: duckdb.DuckDBPyConnection, table: str) -> str:
    names = [r[0] for r in con.execute(
        "select column_name from information_schema.columns where table_schema = 'lake' and table_name = ? "
        "order by ordinal_position", [table]).fetchall()]  # fmt: skip
    skip = {FILE_COLUMN} | NOT_COMPARED.get(table, set())
    return ", ".join(f'"{n}"' for n in names if n not in skip)


def _insert_files(con: duckdb.DuckDBPyConnection, table: str, added: pa.Table) -> int:
    """Insert the rows of ``added`` files (their partition value from the log, their path in ``_file``)."""
    if not added.num_rows:
        return 0
    partition = schemas.PARTITION_COLUMNS[table][0]
    con.register("added_files", added)
    paths = "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in added["filename"].to_pylist()) + "]"
    scan = f"read_parquet({paths}, filename = true, union_by_name = true)"
    present = {r[0] for r in con.execute(f"describe select * from {scan}").fetchall()}
    wanted = [n for n in schemas.LAKE_SCHEMAS[table].names if n != partition and n in present]
    columns = ", ".join(f'data."{n}"' for n in wanted)
    before = con.execute(f'select count(*) from lake."{table}"').fetchall()[0][0]
    con.execute(f'insert into lake."{table}" by name '
                f'select {columns}, added_files."{partition}", added_files.file as {FILE_COLUMN} '
                f"from {scan} as data join added_files using (filename)")  # fmt: skip
    con.execute("insert into lake._files select ?, file, true from added_files", [table])
    con.unregister("added_files")
    return con.execute(f'select count(*) from lake."{table}"').fetchall()[0][0] - before


def _comparison_scope(con: duckdb.DuckDBPyConnection, layout: DataLayout, table: str, state: dict,
                      pinned: dict[str, int]) -> str:  # fmt: skip
    """The rows of ``table`` whose old and new versions the load compares, as a SQL condition:
    every row, or (customer_months, customer_lifetime) only the rows of the customers that the
    metrics runs since the published build recorded in their commits as recomputed (by id, or by
    bucket when there were many); they copied every other customer's rows unchanged, or computed
    them again to the same values, so comparing those finds nothing."""
    old = (state["tables"].get(table) or {}).get("version")
    if table not in lake.RECOMPUTED_TABLES or old is None or pinned.get(table) is None:
        return ""
    try:
        scope = lake.recomputed_scope(layout, table, old, pinned[table])
    except (OSError, ValueError):  # a commit's log entry is gone: compare every row
        return ""
    if scope is None:
        return ""
    if scope.customers is not None:
        con.execute("create or replace temp table recomputed as select unnest(?::varchar[]) as customer_id",
                    [sorted(scope.customers)])  # fmt: skip
        return " and customer_id in (select customer_id from recomputed)"
    con.execute("create or replace temp table recomputed_buckets as select unnest(?::integer[]) as bucket",
                [sorted(scope.buckets)])  # fmt: skip
    return f" and {lake.CUSTOMER_BUCKET_SQL} in (select bucket from recomputed_buckets)"


def _record_changes(con: duckdb.DuckDBPyConnection, table: str, added: list[str], scope: str) -> int:
    """Keys of rows that differ between the removed files' rows (kept in ``removed_<table>``) and
    the added files' rows (those within ``scope``: the rows that matter, of the recorded customers),
    into the table's change table; returns the rows compared. The rows of keys already in the
    change table are left out on both sides: they are recomputed whatever their rows say."""
    target, key, _ = CHANGE_KEYS[table]
    columns = _compared_columns(con, table)
    known = f" and ({key} is null or {key} not in (select {key} from lake.{target} where {key} is not null))"
    con.execute("create or replace temp table added_names as select unnest(?::varchar[]) as file", [added])
    con.execute(f'create or replace temp table added_rows as select {columns} from lake."{table}" '
                f"where {FILE_COLUMN} in (select file from added_names){scope}{known}")  # fmt: skip
    con.execute(f"create or replace temp table removed_rows as select {columns} from removed_{table} "
                f"where true{known}")  # fmt: skip
    con.execute(f"drop table removed_{table}")
    new, old = "select * from added_rows", "select * from removed_rows"
    changed = f"(({new}) except all ({old})) union all (({old}) except all ({new}))"
    con.execute(f"insert into lake.{target} select distinct {key} from ({changed})")
    return con.execute("select (select count(*) from added_rows) + (select count(*) from removed_rows)").fetchall()[0][0]


def _record_as_of_shift(con: duckdb.DuckDBPyConnection, old: dt.date, new: dt.date) -> None:
    """What the staging models' as-of filters let through changes between two as-of dates."""
    lo, hi = sorted((old, new))
    con.execute('insert into lake.changed_days select distinct "date" from lake.revenue_daily '
                'where "date" > ? and "date" <= ?', [lo, hi])  # fmt: skip
    lo_month, hi_month = lo.replace(day=1), hi.replace(day=1)
    if lo_month != hi_month:
        con.execute('insert into lake.changed_customers select distinct customer_id from lake.customer_months '
                    'where "month" > ? and "month" <= ?', [lo_month, hi_month])  # fmt: skip
    con.execute("insert into lake.changed_customers select distinct customer_id from lake.events "
                "where event_type = 'customer.created' and cast(occurred_at as date) > ? "
                "and cast(occurred_at as date) <= ?", [lo, hi])  # fmt: skip


def load(build_file: Path, layout: DataLayout, pinned: dict[str, int], *, state: dict | None, reason: str,
         as_of: dt.date, fingerprint: str) -> LoadResult:  # fmt: skip
    """Bring the build's lake copy to ``pinned``: incrementally on top of ``state`` (the build file
    is then a copy of the published warehouse), or fully into an empty build file."""
    started = time.monotonic()
    result = LoadResult(mode="incremental" if state is not None else "full", reason=reason,
                        views_current=state is not None and state.get("as_of") == as_of.isoformat())  # fmt: skip
    con = connect(build_file)
    try:
        _create_lake_tables(con)
        con.execute("update lake._files set new_in_build = false")
        scopes, added_by_table = {}, {}  # the tables whose old and new rows are compared (after every load)
        for table in LAKE_SOURCES:
            now = _current_files(layout, table, pinned.get(table))
            loaded = {r[0] for r in con.execute("select file from lake._files where table_name = ?",
                                                [table]).fetchall()}  # fmt: skip
            current = set(now["file"].to_pylist())
            removed = sorted(loaded - current)
            added_names = sorted(current - loaded)
            added = now.filter(pc.is_in(now["file"], pa.array(added_names, pa.string())))
            track = state is not None and table in CHANGE_KEYS
            con.execute("create or replace temp table removed_names as select unnest(?::varchar[]) as file",
                        [removed])  # fmt: skip
            if track:
                # only the rows that can put a key in the change table (a row filter commutes with EXCEPT ALL)
                where = CHANGE_KEYS[table][2]
                scopes[table] = _comparison_scope(con, layout, table, state, pinned) + (f" and ({where})" if where else "")
                con.execute(f'create or replace temp table removed_{table} as select * from lake."{table}" '
                            f"where {FILE_COLUMN} in (select file from removed_names){scopes[table]}")  # fmt: skip
                added_by_table[table] = added_names
            if removed:
                result.rows_removed[table] = con.execute(
                    f'delete from lake."{table}" where {FILE_COLUMN} in (select file from removed_names)').fetchall()[0][0]
                con.execute("delete from lake._files where table_name = ? and file in (select file from removed_names)",
                            [table])  # fmt: skip
            result.rows_added[table] = _insert_files(con, table, added)
            result.files_added[table], result.files_removed[table] = len(added_names), len(removed)
        # what changed: first what the as-of date lets through (in a new as-of month, every customer
        # with a row in it), then the rows that differ of the keys not already known to have changed
        if state is not None and state.get("as_of") != as_of.isoformat():
            _record_as_of_shift(con, dt.date.fromisoformat(state["as_of"]), as_of)
        for table, added_names in added_by_table.items():
            if result.files_removed[table] or added_names:
                result.rows_compared[table] = _record_changes(con, table, added_names, scopes[table])
            else:
                con.execute(f"drop table removed_{table}")
        for target in ("changed_customers", "changed_days"):
            con.execute(f"create or replace table lake.{target} as select distinct * from lake.{target}")
        result.changed_customers = con.execute("select count(*) from lake.changed_customers").fetchall()[0][0]
        result.changed_days = con.execute("select count(*) from lake.changed_days").fetchall()[0][0]
        ids = _table_ids(layout, pinned)
        new_state = {"format": LOAD_FORMAT, "fingerprint": fingerprint, "as_of": as_of.isoformat(), "mode": result.mode,
                     "tables": {t: {"version": pinned[t], "id": ids[t]} for t in LAKE_SOURCES if t in pinned}}
        con.execute("delete from lake._load_state")
        con.execute("insert into lake._load_state values (?)", [json.dumps(new_state, sort_keys=True)])
        con.execute("checkpoint")
    finally:
        con.close()
    result.seconds = round(time.monotonic() - started, 3)
    log.info("lake copy: %s load (%s) in %.1fs, %d changed customers, %d changed days", result.mode,
             reason or "incremental", result.seconds, result.changed_customers, result.changed_days)  # fmt: skip
    return result


# a build's bookkeeping (what it loaded, what changed, which run built it): differs between two builds
BUILD_TABLES = {("lake", "_files"), ("lake", "_load_state"), ("lake", "changed_customers"), ("lake", "changed_days"),
                ("periods", "build_info")}  # fmt: skip


def table_differences(a: Path, b: Path) -> dict[str, tuple[int, int]]:
    """Every table of two warehouses compared row for row (EXCEPT ALL both ways): the tables that
    differ, with (rows only in a, rows only in b). A table missing on one side differs too."""
    con = duckdb.connect()
    con.execute(f"attach '{a}' as a (read_only)")
    con.execute(f"attach '{b}' as b (read_only)")

    def tables(catalog):
        return {(s, t) for s, t in con.execute("select table_schema, table_name from information_schema.tables "
                                               "where table_catalog = ?", [catalog]).fetchall()}  # fmt: skip

    ours, theirs = tables("a") - BUILD_TABLES, tables("b") - BUILD_TABLES
    out = {f"{s}.{t}": (-1, -1) for s, t in ours ^ theirs}
    for schema, table in sorted(ours & theirs):
        columns = [r[0] for r in con.execute(
            "select column_name from information_schema.columns where table_catalog = 'b' and table_schema = ? "
            "and table_name = ? order by ordinal_position", [schema, table]).fetchall()]  # fmt: skip
        cols = ", ".join(f'"{c}"' for c in columns)
        one = f'select {cols} from a."{schema}"."{table}"'
        two = f'select {cols} from b."{schema}"."{table}"'
        only_a = con.execute(f"select count(*) from ({one} except all {two})").fetchall()[0][0]
        only_b = con.execute(f"select count(*) from ({two} except all {one})").fetchall()[0][0]
        if only_a or only_b:
            out[f"{schema}.{table}"] = (only_a, only_b)
    con.close()
    return out
