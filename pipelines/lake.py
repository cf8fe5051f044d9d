"""The Parquet lake on disk: layout, partitioned writes, the event-id index and atomic commits.

Layout under ``DATA_DIR/lake``::

    events/event_date=YYYY-MM-DD/part-*.parquet      accepted payment events
    usage/event_date=YYYY-MM-DD/part-*.parquet       accepted usage events
    dead_letter/reason=CODE/part-*.parquet           rejected lines
    customer_months/month=YYYY-MM-01/part-*.parquet  (metrics stage)
    customer_lifetime/as_of=YYYY-MM-DD/part-*.parquet
    late_events/...                                  (streaming: too-late events)
    _index/ingest.sqlite   every accepted event_id with its payload digest, every
                           dead-letter key: duplicate checks cost O(new input)
    _staging/<run_id>/     files written aside by a run in progress
    _journal/<run_id>.json a commit in progress: the renames and index inserts

A run writes everything under ``_staging``; it commits by writing the journal
(atomic rename), renaming each staged file into place, inserting the new keys into
the index, then deleting the journal. Every file appears whole (rename is atomic).
A run killed before the journal exists leaves only staging garbage, removed by the
next run; one killed after is rolled forward by the next command that opens the lake.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from transforms import schemas

log = logging.getLogger(__name__)

TABLES = ("events", "usage", "dead_letter", "customer_months", "customer_lifetime", "late_events")
PARQUET_OPTIONS = {"compression": "zstd", "use_dictionary": True}


class LakeError(RuntimeError):
    pass


def lake_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "lake"


def table_glob(data_dir: Path, table: str) -> str:
    """Absolute glob for DuckDB/pyarrow readers: ``.../lake/<table>/*/*.parquet``."""
    return str((lake_dir(data_dir) / table).resolve() / "*" / "*.parquet")


def has_files(data_dir: Path, table: str) -> bool:
    root = lake_dir(data_dir) / table
    return root.is_dir() and any(root.glob("*/*.parquet"))


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


def write_partitioned(
    table: pa.Table, root: Path, partition: str, file_name: str, sort_keys: list[tuple[str, str]]
) -> list[Path]:
    """Write ``table`` as ``root/<partition>=<value>/<file_name>``, one file per value, rows sorted."""
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
        value = values[start].as_py()
        directory = root / f"{partition}={value.isoformat() if hasattr(value, 'isoformat') else value}"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / file_name
        pq.write_table(body.slice(start, end - start), path, **PARQUET_OPTIONS)
        written.append(path)
    return written


def read_table(data_dir: Path, table: str, columns: list[str] | None = None) -> pa.Table:
    """Read a lake table with its partition column typed per ``schemas.PARTITION_COLUMNS``."""
    import pyarrow.dataset as ds

    root = lake_dir(data_dir) / table
    schema = {"events": schemas.EVENTS, "usage": schemas.USAGE, "customer_months": schemas.CUSTOMER_MONTHS,
              "customer_lifetime": schemas.CUSTOMER_LIFETIME, "late_events": schemas.LATE_EVENTS,
              "dead_letter": schemas.DEAD_LETTER}[table]  # fmt: skip
    name, kind = schemas.PARTITION_COLUMNS.get(table, ("month", pa.date32()))
    if name in schema.names:  # stored as the hive directory, not inside the files
        schema = schema.remove(schema.get_field_index(name))
    full = schema.append(pa.field(name, kind))
    if not has_files(data_dir, table):
        empty = full.empty_table()
        return empty.select(columns) if columns else empty
    files = sorted(str(p) for p in root.glob("*/*.parquet"))
    dataset = ds.dataset(files, schema=full, format="parquet",
                         partitioning=ds.partitioning(pa.schema([pa.field(name, kind)]), flavor="hive"),
                         partition_base_dir=str(root))  # fmt: skip
    return dataset.to_table(columns=columns)


# ------------------------------------------------------------------ index


class EventIndex:
    """SQLite index of accepted event ids and recorded dead-letter keys."""

    def __init__(self, path: Path, readonly: bool = False):
        self.path = Path(path)
        if readonly:
            if not self.path.exists():
                self.conn = None
                return
            self.conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.path)
            self.conn.execute("pragma journal_mode=wal")
            self.conn.execute("pragma synchronous=normal")
            self.conn.execute("pragma cache_size=-262144")  # 256 MiB page cache for bulk inserts
            self.conn.execute(
                "create table if not exists event_ids (event_id text primary key, payload_sha256 text not null)"
                " without rowid"
            )
            self.conn.execute("create table if not exists dead_keys (raw_sha256 text primary key) without rowid")
            self.conn.commit()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()

    def lookup_events(self, ids: list[str]) -> dict[str, str]:
        if self.conn is None or not ids:
            return {}
        return dict(self._lookup("event_ids", "event_id", "payload_sha256", ids))

    def lookup_dead(self, keys: list[str]) -> set[str]:
        if self.conn is None or not keys:
            return set()
        return {k for k, _ in self._lookup("dead_keys", "raw_sha256", "raw_sha256", keys)}

    def _lookup(self, table: str, key: str, value: str, keys: list[str]) -> Iterator[tuple[str, str]]:
        # Point lookups on the primary key: cost grows with the new input, not the lake.
        batch = 900
        for start in range(0, len(keys), batch):
            part = keys[start : start + batch]
            marks = ",".join("?" * len(part))
            yield from self.conn.execute(f"select {key}, {value} from {table} where {key} in ({marks})", part)

    def add(self, events: Iterable[tuple[str, str]], dead_keys: Iterable[str]) -> None:
        with self.conn:
            self.conn.executemany("insert or ignore into event_ids values (?, ?)", events)
            self.conn.executemany("insert or ignore into dead_keys values (?)", ((k,) for k in dead_keys))

    def counts(self) -> tuple[int, int]:
        if self.conn is None:
            return 0, 0
        (events,) = self.conn.execute("select count(*) from event_ids").fetchone()
        (dead,) = self.conn.execute("select count(*) from dead_keys").fetchone()
        return events, dead


def index_path(data_dir: Path) -> Path:
    return lake_dir(data_dir) / "_index" / "ingest.sqlite"


def ensure_index(data_dir: Path) -> None:
    """Rebuild the index from the lake if it is missing (e.g. deleted by hand)."""
    path = index_path(data_dir)
    if path.exists():
        return
    tables = [t for t in ("events", "usage", "dead_letter") if has_files(data_dir, t)]
    if not tables:
        return
    log.warning("event index missing: rebuilding it from the lake (one-time full read of the key columns)")
    index = EventIndex(path)
    try:
        for table in ("events", "usage"):
            if table in tables:
                keys = read_table(data_dir, table, ["event_id", "payload_sha256"])
                index.add(zip(keys["event_id"].to_pylist(), keys["payload_sha256"].to_pylist(), strict=True), [])
        if "dead_letter" in tables:
            index.add([], read_table(data_dir, "dead_letter", ["raw_sha256"])["raw_sha256"].to_pylist())
    finally:
        index.close()


# ------------------------------------------------------------------ commit protocol


@contextlib.contextmanager
def lake_lock(data_dir: Path):
    root = lake_dir(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LakeError(f"another run is writing to {root} (lock held); wait for it to finish") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def staging_dir(data_dir: Path, run_id: str) -> Path:
    return lake_dir(data_dir) / "_staging" / run_id


def commit(data_dir: Path, run_id: str, moves: list[tuple[Path, Path]], index_files: list[Path],
           dead_key_files: list[Path], replace_dirs: list[tuple[Path, Path]] = ()) -> None:  # fmt: skip
    """Make a run's staged files visible: journal first, then renames, then the index."""
    root = lake_dir(data_dir)
    journal = {
        "run_id": run_id,
        "moves": [[str(a.relative_to(root)), str(b.relative_to(root))] for a, b in moves],
        "index_files": [str(p.relative_to(root)) for p in index_files],
        "dead_key_files": [str(p.relative_to(root)) for p in dead_key_files],
        "replace_dirs": [[str(a.relative_to(root)), str(b.relative_to(root))] for a, b in replace_dirs],
    }
    path = root / "_journal" / f"{run_id}.json"
    write_atomic_bytes(path, json.dumps(journal, indent=1).encode())
    _apply(root, journal)
    path.unlink()
    shutil.rmtree(staging_dir(data_dir, run_id), ignore_errors=True)


def _apply(root: Path, journal: dict) -> None:
    touched = set()
    for staged, final in journal["moves"]:
        src, dst = root / staged, root / final
        if src.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
            touched.add(dst.parent)
    for staged, final in journal.get("replace_dirs", []):
        src, dst = root / staged, root / final
        if src.exists():
            old = dst.with_name(f".{dst.name}.old")
            if dst.exists():
                shutil.rmtree(old, ignore_errors=True)
                os.replace(dst, old)
            os.replace(src, dst)
            shutil.rmtree(old, ignore_errors=True)
            touched.add(dst.parent)
    for directory in touched:
        fsync_dir(directory)
    if journal["index_files"] or journal["dead_key_files"]:
        index = EventIndex(root / "_index" / "ingest.sqlite")
        try:
            # each file's keys go in sorted order (B-tree appends rather than random page splits),
            # a file at a time and in batches, so memory stays flat whatever the run's size
            for rel in journal["index_files"]:
                keys = pq.read_table(root / rel).sort_by([("event_id", "ascending")])
                for batch in keys.to_batches(max_chunksize=100_000):
                    index.add(zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True), [])
            for rel in journal["dead_key_files"]:
                dead = pq.read_table(root / rel).sort_by([("raw_sha256", "ascending")])
                for batch in dead.to_batches(max_chunksize=100_000):
                    index.add([], batch.column(0).to_pylist())
        finally:
            index.close()


def recover(data_dir: Path) -> list[str]:
    """Roll forward committed-but-unfinished runs and remove uncommitted staging. Returns run ids."""
    root = lake_dir(data_dir)
    recovered = []
    journal_dir = root / "_journal"
    if journal_dir.is_dir():
        for path in sorted(journal_dir.glob("*.json")):
            journal = json.loads(path.read_text())
            log.warning("completing the commit of interrupted run %s", journal["run_id"])
            _apply(root, journal)
            path.unlink()
            shutil.rmtree(root / "_staging" / journal["run_id"], ignore_errors=True)
            recovered.append(journal["run_id"])
    staging = root / "_staging"
    if staging.is_dir():
        for leftover in staging.iterdir():
            log.warning("removing uncommitted files of interrupted run %s", leftover.name)
            shutil.rmtree(leftover, ignore_errors=True)
    return recovered


def sum_rows(tables: Iterable[pa.Table]) -> int:
    return sum(t.num_rows for t in tables)


def counts_by(table: pa.Table, column: str) -> dict[str, int]:
    if table.num_rows == 0:
        return {}
    result = pc.value_counts(table[column])
    return {r["values"]: r["counts"] for r in result.to_pylist()}
