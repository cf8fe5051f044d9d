"""Delta lake benchmark: what a small batch of new events costs as the lake grows.

    python benchmarks/bench_lake.py [--events 1000000] [--batch 10000] [--workdir /tmp/revenue-bench]

Builds (or reuses) a lake of --events generated events, then ingests a batch of --batch new
events (fresh event ids, same shapes) into a copy of it, three times, and prints the batch's wall
time and peak RSS, with the lake's size. Run it at two sizes to see how the batch cost grows
(duplicate detection reads the event_id column of the committed tables).
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ensure_generated, measure  # noqa: E402

EVENTS_PER_CUSTOMER = 52


def batch_input(src: Path, out: Path, n: int) -> Path:
    """``n`` lines taken from the generated input, with new event ids (so they are new events)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    lines = []
    for path in sorted(src.rglob("*.jsonl*")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            lines += list(itertools.islice(handle, n - len(lines)))
        if len(lines) >= n:
            break
    (out / "batch.jsonl").write_bytes(b"".join(line.replace(b'"evt_', b'"batch_evt_', 1) for line in lines))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/revenue-bench"))
    args = parser.parse_args()
    src = args.workdir / f"input-{args.events}"
    truth = ensure_generated(src, max(1, args.events // EVENTS_PER_CUSTOMER))
    base = args.workdir / f"lake-{args.events}"
    if not (base / "lake" / "events" / "_delta_log").is_dir():
        shutil.rmtree(base, ignore_errors=True)
        full = measure(f"""
            from pipelines.config import build_config
            from pipelines.ingest import run_ingest
            r = run_ingest(build_config({str(base)!r}, input_dir={str(src / 'events')!r}), checksums=False)
            result.update(r.counts())
        """)
        print(f"full ingest of {truth['counts']['lines']:,} lines: {full['seconds']:.1f}s, "
              f"peak RSS {full['peak_rss_mb']:,.0f} MB")
    batch = batch_input(src / "events", args.workdir / f"batch-{args.batch}", args.batch)
    for attempt in range(3):
        data = args.workdir / f"lake-{args.events}-plus-batch"
        shutil.rmtree(data, ignore_errors=True)
        shutil.copytree(base, data)
        r = measure(f"""
            from pipelines.config import build_config
            from pipelines.ingest import run_ingest
            r = run_ingest(build_config({str(data)!r}, input_dir={str(batch)!r}), checksums=False)
            result.update(r.counts())
        """)
        print(f"batch {attempt + 1}: {args.batch:,} new events into a {truth['counts']['accepted']:,}-event lake: "
              f"{r['seconds']:.2f}s, peak RSS {r['peak_rss_mb']:,.0f} MB, written {r['rows_written']:,}, "
              f"duplicates {r['duplicates']:,}, dead letters {r['dead_letters']:,}")


if __name__ == "__main__":
    main()
