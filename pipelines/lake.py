"""The Parquet lake on disk: layout, partitioned writes, the event-id index and atomic commits.

Paths come from ``pipelines.layout.DataLayout``. Tables: ``events`` and ``usage``
(partitioned by ``event_date``), ``dead_letter`` (by ``reason``), ``customer_months``
(by ``month``), ``customer_lifetime`` (by ``as_of``), ``late_events`` (streaming). The
event index (``_index/ingest.sqlite``) holds every accepted event_id with its payload
digest and every dead-letter key, so duplicate checks cost O(new input).

A run writes everything under ``_staging``; it commits by writing the journal
(atomic rename), renaming each staged file into place, inserting the new keys into
the index, then deleting the journal. Every file appears whole (rename is atomic).
A run killed before the journal exists leaves only staging garbage, removed by the
next run; one killed after is rolled forward by the next command that opens the lake.
"""

from __future__ import annotations

import contextlib
import datetime as dt
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

from pipelines.layout import DataLayout
from transforms import schemas
from transforms.errors import LakeError

log = logging.getLogger(__name__)

PARQUET_OPTIONS = {"compression": "zstd", "use_dictionary": True}


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


def read_table(layout: DataLayout, table: str, columns: list[str] | None = None) -> pa.Table:
    """Read a lake table with its partition column typed per ``schemas.PARTITION_COLUMNS``."""
    import pyarrow.dataset as ds

    root = layout.table(table)
    full = schemas.with_partition_column(table)
    name, kind = schemas.PARTITION_COLUMNS[table]
    files = [str(p) for p in layout.table_files(table)]
    if not files:
        empty = full.empty_table()
        return empty.select(columns) if columns else empty
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



def latest_event_day(layout: DataLayout) -> dt.date | None:
    """The UTC date of the latest event in the lake (from partition names: no data read)."""
    days = list(layout.day_partitions("events")) + list(layout.day_partitions("usage"))
    return max(days) if days else None


def _index_usable(path: Path) -> bool:
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            names = {r[0] for r in conn.execute("select name from sqlite_master where type = 'table'")}
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        return False
    return {"event_ids", "dead_keys"} <= names


def ensure_index(layout: DataLayout) -> None:
    """Rebuild the index from the lake when it is missing or unreadable (deleted, truncated, killed mid-build).

    The rebuild writes a new file aside and renames it into place, so a kill during the rebuild
    leaves no index (rebuilt again next time), never an empty or partial one.
    """
    path = layout.index_file
    tables = [t for t in ("events", "usage", "dead_letter") if layout.has_files(t)]
    if path.exists():
        if _index_usable(path):
            return
        log.warning("event index %s is unreadable: rebuilding it from the lake", path)
    if not tables:
        _remove_index(path)
        return
    log.warning("event index missing: rebuilding it from the lake (one-time full read of the key columns)")
    building = path.with_name(path.name + ".rebuild")
    _remove_index(building)
    index = EventIndex(building)
    try:
        for table in ("events", "usage"):
            if table in tables:
                keys = read_table(layout, table, ["event_id", "payload_sha256"])
                index.add(zip(keys["event_id"].to_pylist(), keys["payload_sha256"].to_pylist(), strict=True), [])
        if "dead_letter" in tables:
            index.add([], read_table(layout, "dead_letter", ["raw_sha256"])["raw_sha256"].to_pylist())
        index.conn.execute("pragma wal_checkpoint(truncate)")
    finally:
        index.close()
    _remove_index(path)
    os.replace(building, path)
    fsync_dir(path.parent)


def _remove_index(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


# ------------------------------------------------------------------ commit protocol


@contextlib.contextmanager
def lake_lock(layout: DataLayout):
    root = layout.lake
    root.mkdir(parents=True, exist_ok=True)
    with open(layout.lock_file, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LakeError(f"another run is writing to {root} (lock held); wait for it to finish") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def commit(layout: DataLayout, run_id: str, moves: list[tuple[Path, Path]], index_files: list[Path],
           dead_key_files: list[Path], replace_dirs: list[tuple[Path, Path]] = ()) -> None:  # fmt: skip
    """Make a run's staged files visible: journal first, then renames, then the index."""
    root = layout.lake
    journal = {
        "run_id": run_id,
        "moves": [[str(a.relative_to(root)), str(b.relative_to(root))] for a, b in moves],
        "index_files": [str(p.relative_to(root)) for p in index_files],
        "dead_key_files": [str(p.relative_to(root)) for p in dead_key_files],
        "replace_dirs": [[str(a.relative_to(root)), str(b.relative_to(root))] for a, b in replace_dirs],
    }
    path = layout.journal(run_id)
    write_atomic_bytes(path, json.dumps(journal, indent=1).encode())
    _apply(layout, journal)
    path.unlink()
    shutil.rmtree(layout.staging(run_id), ignore_errors=True)


def _apply(layout: DataLayout, journal: dict) -> None:
    root = layout.lake
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
        index = EventIndex(layout.index_file)
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


def recover(layout: DataLayout) -> list[str]:
    """Roll forward committed-but-unfinished runs and remove uncommitted staging. Returns run ids."""
    recovered = []
    if layout.journal_dir.is_dir():
        for path in sorted(layout.journal_dir.glob("*.json")):
            journal = json.loads(path.read_text())
            log.warning("completing the commit of interrupted run %s", journal["run_id"])
            _apply(layout, journal)
            path.unlink()
            shutil.rmtree(layout.staging(journal["run_id"]), ignore_errors=True)
            recovered.append(journal["run_id"])
    if layout.staging_root.is_dir():
        for leftover in layout.staging_root.iterdir():
            log.warning("removing uncommitted files of interrupted run %s", leftover.name)
            shutil.rmtree(leftover, ignore_errors=True)
    return recovered


def counts_by(table: pa.Table, column: str) -> dict[str, int]:
    if table.num_rows == 0:
        return {}
    result = pc.value_counts(table[column])
    return {r["values"]: r["counts"] for r in result.to_pylist()}
