"""The lake: Delta Lake tables (the open Delta protocol, through ``deltalake`` / delta-rs).

Each table lives under ``DATA_DIR/lake/<table>/``, or under an object-store prefix
(``--lake s3://bucket/prefix``; paths from ``pipelines.layout``, I/O through ``pipelines.store``:
pyarrow.fs and deltalake, never ``os`` or ``Path``): Parquet
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

import base64
import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.layout import DERIVED_SCOPE, INGEST_SCOPE, SCOPES, DataLayout, staging_scope  # noqa: F401
from pipelines.lease import writer_lease
from pipelines.store import LakeStore
from transforms import schemas
from transforms.errors import LakeError

log = logging.getLogger(__name__)

PARQUET_OPTIONS = {"compression": "zstd", "use_dictionary": True}
# Ingest writes one small file per day partition (about 1,700 per million events). zstd costs ~1.4 ms
# more per file than snappy (a fresh compression context per column chunk: 2.4 vs 1.0 ms for an
# 85-row, 29-column file), files ~40 % larger until `revenue maintain` compacts them (delta-rs 1.6 writes the compacted files with zstd).
SMALL_FILE_OPTIONS = {"compression": "snappy", "use_dictionary": True}
DELTA_LOG = "_delta_log"
# commit metadata of a metrics run on customer_months and customer_lifetime that recomputed only
# some customers' rows (the others' rows are what they were): those customers, as a JSON list
# when at most RECOMPUTED_CUSTOMERS_MAX of them, else as the set of their buckets (see
# customer_bucket), a zlib-compressed, base64 bitmap of CUSTOMER_BUCKETS bits (the record lives in the Delta log)
RECOMPUTED_TABLES = ("customer_months", "customer_lifetime")  # the tables whose commits carry that record
RECOMPUTED_CUSTOMERS_KEY = "recomputed_customers"
RECOMPUTED_BUCKETS_KEY = "recomputed_customer_buckets"
RECOMPUTED_CUSTOMERS_MAX = 5000
CUSTOMER_BUCKETS = 1 << 16
# the bucket of a customer: the first 16 bits of the MD5 of its id, in Python and in DuckDB's SQL
CUSTOMER_BUCKET_SQL = "('0x' || left(md5(customer_id), 4))::integer"
LOCAL_WRITE_THREADS = max(1, min(4, os.cpu_count() or 1))
IO_THREADS = 16  # concurrent requests to an object store when writing or reading many small files
APP_ID = "revenue"  # app transactions: "revenue-<table>" -> the number of runs committed to the table
COMPACT_TARGET_BYTES = 100 << 20  # delta-rs's default target size of a compacted file


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic_bytes(path: Path, payload: bytes) -> None:
    """A local file replaced whole (manifests, local state; lake files go through ``LakeStore``)."""
    LakeStore(str(path.parent)).put_bytes(str(path), payload)
    fsync_dir(path.parent)


def partition_dir(partition: str, value) -> str:
    return f"{partition}={partition_text(value)}"


def partition_text(value) -> str:
    """A partition value as the hive folder name and the Delta log write it (a date in ISO form)."""
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def partition_sort(table: pa.Table, partition: str, sort_keys: list[tuple[str, str]]) -> pa.Table:
    """``table`` in one chunk, sorted by ``partition`` then ``sort_keys``: the order ``write_partitioned`` writes."""
    if table.num_rows == 0:
        return table
    return table.combine_chunks().sort_by([(partition, "ascending"), *sort_keys])  # take is slow on many chunks


def write_partitioned(
    table: pa.Table, root: Path | str, partition: str, file_name: str, sort_keys: list[tuple[str, str]],
    store: LakeStore | None = None, options: dict | None = None, presorted: bool = False,
) -> list[str]:
    """Write ``table`` as ``root/<partition>=<value>/<file_name>``, one file per value, rows sorted;
    ``root`` is a path in ``store``'s namespace (a local folder when no store is given).

    Under a lake table's folder these files are uncommitted until ``commit`` names them.
    ``options``: Parquet writer options (default ``PARQUET_OPTIONS``). ``presorted``: ``table`` is
    already ``partition_sort(table, partition, sort_keys)`` (a caller sorting on another thread).
    """
    store = store or LakeStore(str(root))
    if table.num_rows == 0:
        return []
    if not presorted:
        table = partition_sort(table, partition, sort_keys)
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
    pieces = [(body.slice(start, end - start), store.join(str(root), partition_dir(partition, values[start].as_py()),
                                                          file_name))
              for start, end in zip(starts.tolist(), ends.tolist(), strict=True)]  # fmt: skip

    def write(piece) -> str:
        return store.write_parquet(piece[0], piece[1], **(options or PARQUET_OPTIONS))

    if len(pieces) == 1:
        return [write(p) for p in pieces]
    from concurrent.futures import ThreadPoolExecutor

    # an object store: one round trip per file; a local disk: the Parquet encoder releases the GIL, so
    # many small partition files (a day each) are written on every core
    with ThreadPoolExecutor(max_workers=LOCAL_WRITE_THREADS if store.is_local else IO_THREADS) as pool:
        return list(pool.map(write, pieces))


# ------------------------------------------------------------------ reading


def is_table(layout: DataLayout, table: str) -> bool:
    if layout.lake_is_local:
        return (layout.table(table) / DELTA_LOG).is_dir()
    from deltalake import DeltaTable

    return DeltaTable.is_deltatable(layout.table_uri(table), storage_options=layout.store.storage_options)


def open_table(layout: DataLayout, table: str, version: int | None = None):
    """The table at ``version`` (latest when None), or None if the table was never committed."""
    from deltalake import DeltaTable

    if not is_table(layout, table):
        return None
    return DeltaTable(layout.table_uri(table), version=version, storage_options=layout.store.storage_options)


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


def _add_actions(store: LakeStore, table_root: str, paths: list[str], partition: str) -> list:
    """Add actions for data files under a table's root: size and time of each file, row count from
    its footer (in parallel on an object store, where each is a round trip; the cost follows the
    files committed, not the table's size)."""
    from concurrent.futures import ThreadPoolExecutor

    from deltalake.transaction import AddAction

    def action(path: str):
        rel = store.relative(path, table_root)
        value = rel.split("/", 1)[0].split("=", 1)[1]
        info = store.info(path)
        rows = store.parquet_rows(path, info.size)
        mtime = int(info.mtime.timestamp() * 1000) if info.mtime is not None else int(time.time() * 1000)
        return AddAction(rel, info.size, {partition: value}, mtime, True, json.dumps({"numRecords": rows}))

    if store.is_local:
        return [action(p) for p in paths]
    with ThreadPoolExecutor(max_workers=IO_THREADS) as pool:
        return list(pool.map(action, paths))


def commit(layout: DataLayout, table: str, files: list[str], run_id: str, mode: str = "append",
           metadata: dict[str, str] | None = None, replace_partitions=None, always: bool = False,
           app_transactions: dict[str, int] | None = None, read_version: int | None = None) -> int | None:  # fmt: skip
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
    ``read_version``: the table version the run read when it started (``versions`` under the
    writer lease). The commit is made on top of it, so if any other writer committed to the table
    since (which the lease should make impossible), Delta's conflict check on the app transaction
    fails this commit instead of letting two runs' rows in (a ``LakeError``).
    """
    from deltalake import DeltaTable
    from deltalake.exceptions import CommitFailedError
    from deltalake.transaction import CommitProperties, RemoveAction, Transaction

    store, uri, options = layout.store, layout.table_uri(table), layout.store.storage_options
    root = layout.table_path(table)
    schema = schemas.with_partition_column(table)
    partition = schemas.PARTITION_COLUMNS[table][0]
    if not files and mode == "append" and not replace_partitions and not always:
        return table_version(layout, table)
    if store.is_local:
        Path(root).mkdir(parents=True, exist_ok=True)
    if read_version is not None:
        delta = DeltaTable(uri, version=read_version, storage_options=options)
    else:
        delta = DeltaTable.create(uri, schema, partition_by=[partition], mode="ignore", storage_options=options)
    if mode == "overwrite":  # a table an older release created may lack columns added since
        have = {f.name for f in delta.schema().fields}
        missing = [f for f in _delta_fields(schema) if f.name not in have]
        if missing:
            delta.alter.add_columns(missing)
            delta = DeltaTable(uri, storage_options=options)
    app_id = f"{APP_ID}-{table}"
    runs = delta.transaction_version(app_id) or 0
    transactions = [Transaction(app_id, runs + 1)]
    for other, version in (app_transactions or {}).items():
        current = delta.transaction_version(other)
        if current is None or version > current:
            transactions.append(Transaction(other, int(version)))
    actions = _add_actions(store, root, sorted(map(str, files)), partition)
    if replace_partitions:
        wanted = {partition_text(v) for v in replace_partitions}
        current = pa.table(delta.get_add_actions(flatten=True))
        now = int(time.time() * 1000)
        for path, size, value in zip(current["path"].to_pylist(), current["size_bytes"].to_pylist(),
                                     current[f"partition.{partition}"].to_pylist(), strict=True):  # fmt: skip
            text = partition_text(value)
            if text in wanted:
                actions.append(RemoveAction(path, True, now, size, {partition: text}))
    try:
        delta.create_write_transaction(
            actions, mode, schema, partition_by=[partition],
            commit_properties=CommitProperties(custom_metadata={"run_id": run_id, **(metadata or {})},
                                               app_transactions=transactions),
        )  # fmt: skip
    except CommitFailedError as exc:
        reason = str(exc).splitlines()[0]
        raise LakeError(f"another run committed to {table} while run {run_id} was writing ({reason}); "
                        "nothing of this run is in that table: rerun it") from None  # fmt: skip
    return DeltaTable(uri, storage_options=options).version()


def compact_small_files(layout: DataLayout, table: str, run_id: str, min_files: int = 2,
                        target_bytes: int | None = None, metadata: dict[str, str] | None = None,
                        max_files: int | None = None) -> dict:
    """Merge the small data files of each partition holding at least ``min_files`` of them, in ONE
    commit that only rearranges files (Delta's OPTIMIZE: its adds and removes carry
    ``dataChange=false``, so readers, time travel and the app transactions that record stream
    positions see the same rows before and after); then checkpoint the log, so opening the table
    replays a checkpoint and the few commits after it, not every commit since the table began.

    A file of ``target_bytes`` or more is never rewritten (``None``: delta-rs's default, 100 MB), so
    a partition's rewrite stays bounded however large it grows. ``max_files``: merge the partitions
    with the most small files first, until about that many files (at least one partition): the
    rest wait for the next call, so one call's cost stays bounded. Called under the writer lease (by
    ``revenue maintain``, and by the stream after a batch's commits). Returns what was merged:
    ``{"version", "partitions", "files_removed", "files_added", "seconds", "checkpoint_seconds"}``
    (``{}`` if nothing needed it).
    """
    from deltalake.transaction import CommitProperties

    started = time.monotonic()
    delta = open_table(layout, table)
    if delta is None:
        return {}
    column = schemas.PARTITION_COLUMNS[table][0]
    actions = pa.table(delta.get_add_actions(flatten=True))
    small = actions.filter(pc.less(actions["size_bytes"], target_bytes or COMPACT_TARGET_BYTES))
    counts = pc.value_counts(small[f"partition.{column}"]).to_pylist() if small.num_rows else []
    eligible = sorted(((c["counts"], partition_text(c["values"])) for c in counts if c["counts"] >= min_files),
                      key=lambda c: (-c[0], c[1]))  # fmt: skip
    wanted, files = [], 0
    for count, value in eligible:
        if wanted and max_files is not None and files + count > max_files:
            break
        wanted.append(value)
        files += count
    if not wanted:
        return {}
    merged = delta.optimize.compact(
        partition_filters=[(column, "in", wanted)], target_size=target_bytes,
        commit_properties=CommitProperties(custom_metadata={"run_id": run_id, "compaction": "small files",
                                                            **(metadata or {})}),
    )  # fmt: skip
    merge_seconds = time.monotonic() - started
    delta.create_checkpoint()
    return {"version": delta.version(), "partitions": len(wanted), "files_removed": merged.get("numFilesRemoved", 0),
            "files_added": merged.get("numFilesAdded", 0), "seconds": round(merge_seconds, 3),
            "checkpoint_seconds": round(time.monotonic() - started - merge_seconds, 3)}  # fmt: skip


def _delta_fields(schema: pa.Schema):
    from deltalake import Schema

    return Schema.from_arrow(schema).fields


def commit_metadata(layout: DataLayout, table: str) -> dict:
    """The latest commit's metadata (run id and what the writer recorded), or {} for no table."""
    delta = open_table(layout, table)
    if delta is None:
        return {}
    return (delta.history(1) or [{}])[0]


def files_by_partition(layout: DataLayout, table: str, version: int | None = None, rows: dict | None = None,
                       sizes: dict | None = None) -> dict:  # fmt: skip
    """``{partition value: [file paths]}`` of one committed version (from the log: no data read): paths
    in the lake store's filesystem namespace (absolute paths of a local lake), read them through it.
    ``rows``, when given, receives ``{partition value: row count}`` (the log's statistics);
    ``sizes`` receives ``{file path: bytes}``."""
    delta = open_table(layout, table, version)
    if delta is None:
        return {}
    column = schemas.PARTITION_COLUMNS[table][0]
    actions = pa.table(delta.get_add_actions(flatten=True))
    store, root = layout.store, layout.table_path(table)
    out: dict = {}
    for path, value, count, size in zip(actions["path"].to_pylist(), actions[f"partition.{column}"].to_pylist(),
                                        actions["num_records"].to_pylist(), actions["size_bytes"].to_pylist(),
                                        strict=True):  # fmt: skip
        out.setdefault(value, []).append(store.join(root, path))
        if sizes is not None:
            sizes[out[value][-1]] = size
        if rows is not None:
            rows[value] = rows.get(value, 0) + (count or 0)
    return out


def data_changes(layout: DataLayout, table: str, old: int, new: int) -> tuple[list[str], list[str]]:
    """The data files that commits ``old + 1 .. new`` added and removed as a change of the table's
    rows (``dataChange=true``), read from those commits in the Delta log: a compaction's files
    (``dataChange=false``: the same rows rearranged) are not among them. Paths as in
    ``files_by_partition``. A file added then removed within the range is in both lists. Raises
    (``OSError``, ``ValueError``) when a commit's log entry is gone (cleaned up past its retention).
    The files named may since have been compacted away: they stay readable until ``revenue maintain``
    vacuums them."""
    from urllib.parse import unquote

    store, root = layout.store, layout.table_path(table)
    added, removed = [], []
    for actions in _log_entries(layout, table, old, new):
        for action in actions:
            for kind, out in (("add", added), ("remove", removed)):
                file = action.get(kind)
                if file is not None and file.get("dataChange", True):
                    out.append(store.join(root, unquote(file["path"])))
    return added, removed


def _log_entries(layout: DataLayout, table: str, old: int, new: int):
    """The actions of each commit ``old + 1 .. new``, read from the Delta log (see ``data_changes``)."""
    if new < old:
        raise ValueError(f"{table}: version {new} is older than {old} (the table was recreated or rolled back)")
    store, root = layout.store, layout.table_path(table)
    for version in range(old + 1, new + 1):
        entry = store.get_bytes(store.join(root, DELTA_LOG, f"{version:020d}.json"))
        yield [json.loads(line) for line in entry.splitlines() if line.strip()]


def customer_bucket(customer_id: str) -> int:
    """A customer's bucket in a recomputed-customers bitmap (``CUSTOMER_BUCKET_SQL`` in DuckDB)."""
    return int.from_bytes(hashlib.md5(customer_id.encode()).digest()[:2], "big")


def recomputed_record(customers) -> dict[str, str]:
    """The commit metadata naming the customers whose rows a metrics run recomputed: their ids, or
    above RECOMPUTED_CUSTOMERS_MAX their buckets (~8 KB at most, whatever the number of customers)."""
    if len(customers) <= RECOMPUTED_CUSTOMERS_MAX:
        return {RECOMPUTED_CUSTOMERS_KEY: json.dumps(list(customers))}
    bits = np.zeros(CUSTOMER_BUCKETS, dtype=bool)
    bits[[customer_bucket(c) for c in customers]] = True
    return {RECOMPUTED_BUCKETS_KEY: base64.b64encode(zlib.compress(np.packbits(bits).tobytes(), 9)).decode()}


def _record_buckets(text: str) -> set[int]:
    packed = np.frombuffer(zlib.decompress(base64.b64decode(text)), dtype=np.uint8)
    bits = np.unpackbits(packed)
    if bits.size != CUSTOMER_BUCKETS:
        raise ValueError(f"a recomputed-customer bitmap of {bits.size} bits, not {CUSTOMER_BUCKETS}")
    return set(np.flatnonzero(bits).tolist())


@dataclass(frozen=True)
class RecomputedScope:
    """The customers whose rows some commits may have changed: exactly (``customers``) when every
    commit listed them, else ``buckets`` holding at least every one of them (and some others)."""

    customers: frozenset | None = None
    buckets: frozenset | None = None


def recomputed_scope(layout: DataLayout, table: str, old: int, new: int) -> RecomputedScope | None:
    """What commits ``old + 1 .. new`` of a derived table recorded as recomputed (``recomputed_record``),
    or None when a commit among them changed rows (``dataChange=true``) without a record (a full
    rebuild): then only reading the rows tells what changed. A commit that changes no row (a
    compaction, a run that only records itself) needs no record. Raises like ``data_changes``."""
    customers: set[str] = set()
    buckets: set[int] | None = None
    for actions in _log_entries(layout, table, old, new):
        info = next((a["commitInfo"] for a in actions if "commitInfo" in a), {})
        changes = any(a[kind].get("dataChange", True) for a in actions for kind in ("add", "remove") if kind in a)
        if RECOMPUTED_CUSTOMERS_KEY in info:
            customers.update(json.loads(info[RECOMPUTED_CUSTOMERS_KEY]))
        elif RECOMPUTED_BUCKETS_KEY in info:
            buckets = (buckets or set()) | _record_buckets(info[RECOMPUTED_BUCKETS_KEY])
        elif changes:
            return None
    if buckets is None:
        return RecomputedScope(customers=frozenset(customers))
    return RecomputedScope(buckets=frozenset(buckets | {customer_bucket(c) for c in customers}))


def app_version(layout: DataLayout, table: str, app_id: str) -> int | None:
    """The version an app transaction recorded in a table (e.g. a stream's last ingested offset)."""
    delta = open_table(layout, table)
    return delta.transaction_version(app_id) if delta is not None else None


def run_files(layout: DataLayout, table: str, run_id: str) -> list[str]:
    """The data files a run wrote under a table's folder (``<partition>/part-<run_id>*.parquet``)."""
    store, root = layout.store, layout.table_path(table)
    found = []
    for info in store.files(root):
        rel = store.relative(info.path, root)
        folder, _, name = rel.rpartition("/")
        if folder and "/" not in folder and "=" in folder and name.startswith(f"part-{run_id}") \
                and name.endswith(".parquet"):
            found.append(info.path)
    return found


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
                    layout.store.delete_file(path)
        raise


# ------------------------------------------------------------------ one writer, leftovers, upgrade


@contextlib.contextmanager
def lake_lock(layout: DataLayout, scopes: tuple[str, ...] = SCOPES):
    """One writer per scope (a second one exits 1 with one line): ``pipelines.lease``.

    The ingest tables (``INGEST_SCOPE``) and the derived tables the metrics stage writes
    (``DERIVED_SCOPE``) have a lock each: a metrics run reads the ingest tables at the versions it
    pins and never commits to them, so a stream's micro-batch need not wait for a publish's
    metrics. Whatever touches every table (maintain, a month close, the upgrade of an old lake)
    holds both, always taken in the same order."""
    whole = set(scopes) == set(SCOPES)
    if not whole and _old_format_tables(layout):
        scopes, whole = SCOPES, True  # the upgrade rewrites every table
    with contextlib.ExitStack() as held:
        for scope in SCOPES:
            if scope in scopes:
                held.enter_context(writer_lease(layout, scope))
        if whole:
            upgrade(layout)
        clean_staging(layout, scopes)
        yield


def clean_staging(layout: DataLayout, scopes: tuple[str, ...] = SCOPES) -> list[str]:
    """Remove the scratch files of interrupted runs of ``scopes`` (never part of any table version);
    the caller holds those scopes' locks, so none of those runs is still running."""
    removed = []
    store = layout.store
    for leftover in store.children(layout.staging_root_path):
        if staging_scope(leftover) not in scopes:
            continue  # a writer of the other scope may be running: it is its own to clean
        log.warning("removing scratch files of interrupted run %s", leftover)
        store.delete_dir(store.join(layout.staging_root_path, leftover))
        removed.append(leftover)
    return removed


def _old_format_tables(layout: DataLayout) -> list[str]:
    """Tables of a lake the previous release wrote: it always kept its event index in ``_index/``.

    (Parquet files under a table with no log and no such index are a killed run's uncommitted
    files, never data.)"""
    if not layout.lake_is_local or not (layout.lake / "_index").is_dir():  # that release wrote local lakes only
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
