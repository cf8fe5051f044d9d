"""`revenue maintain`: a lake fed by many small batches keeps a bounded number of files per partition."""

from __future__ import annotations

import gzip

import pyarrow.compute as pc
from conftest import cfg, write_lines

from pipelines import lake
from pipelines.generate import generate
from pipelines.ingest import run_ingest
from pipelines.layout import DataLayout
from pipelines.maintain import run_maintain

BATCHES = 6


def files_per_partition(layout: DataLayout, table: str) -> dict:
    return {value: len(files) for value, files in lake.files_by_partition(layout, table).items()}


def input_lines(folder) -> list[bytes]:
    out = []
    for path in sorted(folder.rglob("*.jsonl*")):
        raw = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
        out += raw.splitlines()
    return out


def test_many_small_batches_keep_a_bounded_number_of_files_per_partition(tmp_path):
    source = tmp_path / "input"
    generate(source, customers=150, months=2, seed=5, bad_rate=0.0, start="2025-01", n_files=1)
    lines = input_lines(source / "events")
    data = tmp_path / "data"
    layout = DataLayout(data)
    # 2 x BATCHES small batches, each a round-robin share of the lines (every batch touches most
    # days); the second round is the same events under new ids, so every batch adds rows
    for round_, prefix in enumerate((b"", b"again-")):
        for i in range(BATCHES):
            batch = [line.replace(b'"event_id":"', b'"event_id":"' + prefix) for line in lines[i::BATCHES]]
            folder = write_lines(tmp_path / f"round{round_}" / f"batch{i}" / "events.jsonl", batch).parent
            run_ingest(cfg(data, input_dir=folder), write_run_manifest=False, checksums=False)
    grown = files_per_partition(layout, "events")
    assert max(grown.values()) == 2 * BATCHES  # without compaction, one more file per batch
    before = lake.read_table(layout, "events")

    result = run_maintain(cfg(data), retention_hours=0)

    after = files_per_partition(layout, "events")
    assert after.keys() == grown.keys()
    assert max(after.values()) == 1, after  # each day's small files merged into one
    assert result.tables["events"]["files_compacted"] == sum(n for n in grown.values() if n > 1)
    rows = lake.read_table(layout, "events")
    assert rows.num_rows == before.num_rows == pc.count_distinct(rows["event_id"]).as_py()
    key = [("event_id", "ascending")]
    assert rows.sort_by(key).equals(before.select(rows.schema.names).sort_by(key))
    # vacuum (retention 0) left only the compacted files on disk
    on_disk = sorted(str(p) for p in layout.table("events").glob("*=*/*.parquet"))
    named = sorted(f for files in lake.files_by_partition(layout, "events").values() for f in files)
    assert on_disk == named
