"""The lake: Delta Lake tables (the open Delta protocol, through ``deltalake`` / delta-rs).

Each table lives under ``DATA_DIR/lake/<table>/`` (paths from ``pipelines.layout``): Parquet
data files, hive-partitioned as ``transforms.schemas.PARTITION_COLUMNS`` says, and the
``_delta_log/`` that says which files make each version. Writers put new data files into the
table folder (invisible: no version names them yet) and then make them visible in ONE commit
per table per run, carrying the run id in the commit metadata. A reader sees one committed
version, never part of a run; any past version stays readable (time travel) until
``revenue maintain`` vacuums it. Files of a run killed before its commit are never read and
are removed by ``maintain``.

There is no multi-table transaction: a run commits its tables one after the other, each commit
idempotent through the deduplication (an event already committed is a duplicate the next time),
so a kill between two commits followed by a rerun gives exactly the clean result.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.layout import DataLayout
from transforms import schemas
from transforms.errors import LakeError

log = logging.getLogger(__name__)

PARQUET_OPTIONS = {"compression": "zstd", "use_dictionary": True}
DELTA_LOG = "_delta_log"
APP_ID = "revenue"  # app transactions: "revenue-<table>" -> the number of runs committed to the table


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic_bytes(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def partition_dir(partition: str, value) -> str:
    return f"{partition}={value.isoformat() if hasattr(value, 'isoformat') else value}"


def write_partitioned(
    table: pa.Table, root: Path, partition: str, file_name: str, sort_keys: list[tuple[str, str]]
) -> list[Path]:
    """Write ``table`` as ``root/<partition>=<value>/<file_name>``, one file per value, rows sorted.

    Under a lake table's folder these files are uncommitted until ``commit`` names them.
    """
    if table.num_rows == 0:
        return []
    table = table.sort_by([(partition, "ascending"), *sort_keys])
    values = table[partition].combine_chunks()
    as_int = values.cast(pa.int32()) if pa.types.is_date32(values.type) else None
    if as_int is not None:
        raw = as_int.to_numpy()
        starts = np.flatnonzero(np.r_[True, raw[1:] != raw[:-1]])
    else:
        raw_list = values.to_pylist()
        starts = np.array([i for i in range(len(raw_list)) if i == 0 or raw_list[i] != raw_list[i - 1]])
    ends = np.r_[starts[1:], table.num_rows]
    body = table.drop_columns([partition])
    written = []
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        directory = root / partition_dir(partition, values[start].as_py())
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / file_name
        pq.write_table(body.slice(start, end - start), path, **PARQUET_OPTIONS)
        written.append(path)
    return written


# ------------------------------------------------------------------ reading


def is_table(layout: DataLayout, table: str) -> bool:
    return (layout.table(table) / DELTA_LOG).is_dir()


def open_table(layout: DataLayout, table: str, version: int | None = None):
    """The table at ``version`` (latest when None), or None if the table was never committed."""
    from deltalake import DeltaTable

    if not is_table(layout, table):
        return None
    return DeltaTable(str(layout.table(table)), version=version)


def table_version(layout: DataLayout, table: str) -> int | None:
    delta = open_table(layout, table)
    return delta.version() if delta is not None else None


def versions(layout: DataLayout, tables=None) -> dict[str, int]:
    """Each existing lake table's current version (what a run pins, what a manifest records)."""
    out = {}
    for table in tables or schemas.LAKE_SCHEMAS:
        version = table_version(layout, table)
        if version is not None:
            out[table] = version
    return out


def dataset(layout: DataLayout, table: str, version: int | None = None):
    """A pyarrow dataset of one committed version (partition column typed), or None."""
    delta = open_table(layout, table, version)
    return delta.to_pyarrow_dataset() if delta is not None else None


def read_table(layout: DataLayout, table: str, columns: list[str] | None = None, version: int | None = None,
               filter=None) -> pa.Table:  # fmt: skip
    """A lake table (one committed version) with its partition column typed; empty if never written."""
    data = dataset(layout, table, version)
    if data is None:
        empty = schemas.with_partition_column(table).empty_table()
        return empty.select(columns) if columns else empty
    return data.to_table(columns=columns, filter=filter)


def row_count(layout: DataLayout, table: str, version: int | None = None) -> int:
    """A table version's row count, from its log's file statistics (no data read); 0 if never written."""
    delta = open_table(layout, table, version)
    if delta is None:
        return 0
    counts = pa.table(delta.get_add_actions(flatten=True))["num_records"]
    return int(pc.sum(counts).as_py() or 0)


def last_run_id(layout: DataLayout, table: str) -> str | None:
    """The run id recorded in the table's latest commit."""
    delta = open_table(layout, table)
    if delta is None:
        return None
    return (delta.history(1) or [{}])[0].get("run_id")


def partition_values(layout: DataLayout, table: str, version: int | None = None) -> list:
    """Distinct values of the table's partition column in a version (from the log: no data read)."""
    delta = open_table(layout, table, version)
    if delta is None:
        return []
    column = schemas.PARTITION_COLUMNS[table][0]
    actions = pa.table(delta.get_add_actions(flatten=True))
    if not actions.num_rows:
        return []
    values = actions[f"partition.{column}"]
    return sorted(v for v in pc.unique(values).to_pylist() if v is not None)


def latest_event_day(layout: DataLayout) -> dt.date | None:
    """The UTC date of the latest event in the lake (partition values from the log: no data read)."""
    days = partition_values(layout, "events") + partition_values(layout, "usage")
    return max(days) if days else None


def counts_by(table: pa.Table, column: str) -> dict[str, int]:
    if table.num_rows == 0:
        return {}
    result = pc.value_counts(table[column])
    return {r["values"]: r["counts"] for r in result.to_pylist()}


# ------------------------------------------------------------------ committing


def _add_action(table_root: Path, path: Path, partition: str):
    from deltalake.transaction import AddAction

    rel = path.relative_to(table_root).as_posix()
    value = rel.split("/", 1)[0].split("=", 1)[1]
    stat = path.stat()
    rows = pq.ParquetFile(path).metadata.num_rows
    return AddAction(rel, stat.st_size, {partition: value}, int(stat.st_mtime * 1000), True,
                     json.dumps({"numRecords": rows}))  # fmt: skip


def commit(layout: DataLayout, table: str, files: list[Path], run_id: str, mode: str = "append",
           metadata: dict[str, str] | None = None, replace_partitions=None, always: bool = False,
           app_transactions: dict[str, int] | None = None) -> int | None:  # fmt: skip
    """Make ``files`` (written under the table's folder) visible in one commit; returns the new version.

    ``mode="overwrite"`` replaces the table's content with exactly these files (derived tables).
    ``replace_partitions`` (with ``mode="append"``): the partition values whose current files the
    same commit removes, so those partitions hold exactly the new files (an incremental rewrite).
    Every commit records the run id (plus ``metadata``) and advances the app transaction
    ``revenue-<table>``. An append of no files that replaces nothing commits nothing, unless
    ``always`` (a commit that only records the run, e.g. a derived table this run left as it was,
    or a stream batch whose source position must be recorded even when it added nothing here).
    ``app_transactions`` (``{app_id: version}``) are recorded in the same commit, e.g. a stream
    consumer's source position (``stream:<source>`` -> last offset); an app id whose recorded
    version is already at or past the given one is left as it is.
    """
    from deltalake import DeltaTable
    from deltalake.transaction import CommitProperties, RemoveAction, Transaction

    root = layout.table(table)
    schema = schemas.with_partition_column(table)
    partition = schemas.PARTITION_COLUMNS[table][0]
    if not files and mode == "append" and not replace_partitions and not always:
        return table_version(layout, table)
    root.mkdir(parents=True, exist_ok=True)
    delta = DeltaTable.create(str(root), schema, partition_by=[partition], mode="ignore")
    if mode == "overwrite":  # a table an older release created may lack columns added since
        have = {f.name for f in delta.schema().fields}
        missing = [f for f in _delta_fields(schema) if f.name not in have]
        if missing:
            delta.alter.add_columns(missing)
            delta = DeltaTable(str(root))
    app_id = f"{APP_ID}-{table}"
    runs = delta.transaction_version(app_id) or 0
    transactions = [Transaction(app_id, runs + 1)]
    for other, version in (app_transactions or {}).items():
        current = delta.transaction_version(other)
        if current is None or version > current:
            transactions.append(Transaction(other, int(version)))
    actions = [_add_action(root, Path(f), partition) for f in sorted(files)]
    if replace_partitions:
        wanted = {v.isoformat() if hasattr(v, "isoformat") else str(v) for v in replace_partitions}
        current = pa.table(delta.get_add_actions(flatten=True))
        now = int(time.time() * 1000)
        for path, size, value in zip(current["path"].to_pylist(), current["size_bytes"].to_pylist(),
                                     current[f"partition.{partition}"].to_pylist(), strict=True):  # fmt: skip
            text = value.isoformat() if hasattr(value, "isoformat") else str(value)
            if text in wanted:
                actions.append(RemoveAction(path, True, now, size, {partition: text}))
    delta.create_write_transaction(
        actions, mode, schema, partition_by=[partition],
        commit_properties=CommitProperties(custom_metadata={"run_id": run_id, **(metadata or {})},
                                           app_transactions=transactions),
    )  # fmt: skip
    return DeltaTable(str(root)).version()


def _delta_fields(schema: pa.Schema):
    from deltalake import Schema

    return Schema.from_arrow(schema).fields


def commit_metadata(layout: DataLayout, table: str) -> dict:
    """The latest commit's metadata (run id and what the writer recorded), or {} for no table."""
    delta = open_table(layout, table)
    if delta is None:
        return {}
    return (delta.history(1) or [{}])[0]


def files_by_partition(layout: DataLayout, table: str, version: int | None = None, rows: dict | None = None) -> dict:
    """``{partition value: [absolute file URIs]}`` of one committed version (from the log: no data read).
    ``rows``, when given, receives ``{partition value: row count}`` (the log's statistics)."""
    delta = open_table(layout, table, version)
    if delta is None:
        return {}
    column = schemas.PARTITION_COLUMNS[table][0]
    actions = pa.table(delta.get_add_actions(flatten=True))
    root = layout.table(table)
    out: dict = {}
    for path, value, count in zip(actions["path"].to_pylist(), actions[f"partition.{column}"].to_pylist(),
                                  actions["num_records"].to_pylist(), strict=True):  # fmt: skip
        out.setdefault(value, []).append(str(root / path))
        if rows is not None:
            rows[value] = rows.get(value, 0) + (count or 0)
    return out


def app_version(layout: DataLayout, table: str, app_id: str) -> int | None:
    """The version an app transaction recorded in a table (e.g. a stream's last ingested offset)."""
    delta = open_table(layout, table)
    return delta.transaction_version(app_id) if delta is not None else None


def run_files(layout: DataLayout, table: str, run_id: str) -> list[Path]:
    """The data files a run wrote under a table's folder (``part-<run_id>*.parquet``)."""
    root = layout.table(table)
    return sorted(root.glob(f"*/part-{run_id}*.parquet")) if root.is_dir() else []


@contextlib.contextmanager
def run_writes(layout: DataLayout, run_id: str, tables):
    """Around a run's writes: if it fails (an error, not a kill), the data files it wrote to tables
    it did not commit are deleted at once; yields the set to add each committed table to."""
    committed: set[str] = set()
    try:
        yield committed
    except BaseException:
        for table in tables:
            if table not in committed:
                for path in run_files(layout, table, run_id):
                    path.unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------ one writer, leftovers, upgrade


@contextlib.contextmanager
def lake_lock(layout: DataLayout):
    """One writing run per data dir (a second one exits 1 with one line)."""
    root = layout.lake
    root.mkdir(parents=True, exist_ok=True)
    with open(layout.lock_file, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LakeError(f"another run is writing to {root} (lock held); wait for it to finish") from None
        try:
            upgrade(layout)
            clean_staging(layout)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def clean_staging(layout: DataLayout) -> list[str]:
    """Remove the scratch files of interrupted runs (never part of any table version)."""
    removed = []
    if layout.staging_root.is_dir():
        for leftover in layout.staging_root.iterdir():
            log.warning("removing scratch files of interrupted run %s", leftover.name)
            shutil.rmtree(leftover, ignore_errors=True)
            removed.append(leftover.name)
    return removed


def _old_format_tables(layout: DataLayout) -> list[str]:
    """Tables of a lake the previous release wrote: it always kept its event index in ``_index/``.

    (Parquet files under a table with no log and no such index are a killed run's uncommitted
    files, never data.)"""
    if not (layout.lake / "_index").is_dir():
        return []
    return [t for t in schemas.LAKE_SCHEMAS if layout.table(t).is_dir() and not is_table(layout, t)
            and any(layout.table(t).glob("*=*/*.parquet"))]  # fmt: skip


def upgrade(layout: DataLayout) -> list[str]:
    """Convert a lake written by the pre-Delta release (hive Parquet, journal, SQLite index) in place.

    Each table becomes a Delta table in one commit over its existing files; row counts are
    checked before and after; the old event index and journal folder go.
    """
    import pyarrow.dataset as ds
    from deltalake import Schema, convert_to_deltalake

    tables = _old_format_tables(layout)
    if not tables:
        return []
    journal = layout.lake / "_journal"
    if journal.is_dir() and any(journal.iterdir()):
        raise LakeError(f"{journal} holds an unfinished commit of the previous release: finish it with that "
                        "release (rerun it once), then upgrade")  # fmt: skip
    started = time.monotonic()
    counts = {}
    for table in tables:
        name, kind = schemas.PARTITION_COLUMNS[table]
        partitioning = pa.schema([pa.field(name, kind)])
        root = layout.table(table)
        before = ds.dataset(str(root), format="parquet", partitioning=ds.partitioning(partitioning, flavor="hive"),
                            ignore_prefixes=["_", "."]).count_rows()  # fmt: skip
        convert_to_deltalake(str(root), partition_by=Schema.from_arrow(partitioning), partition_strategy="hive")
        after = open_table(layout, table).to_pyarrow_dataset().count_rows()
        if before != after:
            raise LakeError(f"upgrading {table}: {before} rows before, {after} after; the lake is left as it was "
                            f"except {root / DELTA_LOG}, which you can delete to retry")  # fmt: skip
        counts[table] = after
    shutil.rmtree(layout.lake / "_index", ignore_errors=True)
    shutil.rmtree(journal, ignore_errors=True)
    log.warning("upgraded the lake to Delta tables in %.1fs: %s", time.monotonic() - started,
                ", ".join(f"{t} {n:,} rows" for t, n in counts.items()))  # fmt: skip
    return tables
