"""``LakeStore.read_rows``: what the metrics stage and the ingest's duplicate lookup read lake files with."""

import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.store import LakeStore

SCHEMA = pa.schema([("event_id", pa.string()), ("customer_id", pa.string()), ("amount", pa.int64()),
                    ("day", pa.date32())])  # fmt: skip


def _write(path, rows: dict) -> str:
    pq.write_table(pa.table(rows), path)
    return str(path)


@pytest.fixture
def files(tmp_path):
    """Three files as a lake can hold them: a column missing from an earlier release's file, columns in
    another order, and several row groups."""
    day = dt.date(2025, 3, 1)
    return [
        _write(tmp_path / "a.parquet", {"event_id": ["e1", "e2", "e3"], "customer_id": ["c1", "c2", "c1"],
                                        "amount": [10, 20, 30], "day": [day] * 3}),
        _write(tmp_path / "b.parquet", {"customer_id": ["c2", "c3"], "event_id": ["e4", "e5"], "amount": [40, 50]}),
        _write(tmp_path / "c.parquet", {"event_id": [f"x{i}" for i in range(5000)], "customer_id": ["c1"] * 5000,
                                        "amount": list(range(5000)), "day": [day] * 5000}),
    ]  # fmt: skip


def _pyarrow(store: LakeStore, files: list[str], column=None, values=None) -> pa.Table:
    import pyarrow.compute as pc

    wanted = None if column is None else pc.field(column).isin(pa.array(values, SCHEMA.field(column).type))
    return store.dataset(files, SCHEMA).to_table(filter=wanted)


def test_read_rows_equals_pyarrows_reader_in_file_and_row_order(files, tmp_path):
    store = LakeStore(str(tmp_path))
    got = store.read_rows(files, SCHEMA)
    assert got.schema == SCHEMA
    assert got.equals(_pyarrow(store, files))
    assert got.column("day").null_count == 2  # the file without the column
    for order in (files, files[::-1], files[1:]):
        assert store.read_rows(order, SCHEMA).equals(_pyarrow(store, order))


def test_read_rows_keeps_only_the_wanted_values(files, tmp_path):
    store = LakeStore(str(tmp_path))
    got = store.read_rows(files, SCHEMA, "customer_id", ["c2", "c3", "nobody"])
    assert got["event_id"].to_pylist() == ["e2", "e4", "e5"]
    assert got.equals(_pyarrow(store, files, "customer_id", ["c2", "c3", "nobody"]))
    assert store.read_rows(files, SCHEMA, "customer_id", []).num_rows == 0
    assert store.read_rows([(f, 0) for f in files[2:]], SCHEMA, "event_id", ["x4999", "x0"])["amount"].to_pylist() == [0, 4999]
    assert store.read_rows([], SCHEMA).equals(SCHEMA.empty_table())
