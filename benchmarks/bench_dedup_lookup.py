"""The ingest's duplicate lookup against a lake: how long one shard's lookup of 1,000 ids takes.

    python benchmarks/bench_dedup_lookup.py --data-dir DIR [--ids 1000]

DIR is a data dir with a lake (for example the one `bench_run.py --events 10000000` leaves). Times
`LakeKeys.event_hashes` (what each dedup shard calls) three times: ids the lake does not hold
(a batch of new events), the same ids with five the lake holds (a batch with a few duplicates),
and new ids again. To compare two checkouts, run it from each with `PYTHONPATH=CHECKOUT`.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO  # noqa: E402

sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--ids", type=int, default=1000)
    args = parser.parse_args()
    from pipelines import lake
    from pipelines.ingest import INGEST_TABLES, LakeKeys
    from pipelines.layout import DataLayout

    layout = DataLayout(args.data_dir)
    pinned = lake.versions(layout, INGEST_TABLES)
    new = [f"bench_lookup_absent_{i}" for i in range(args.ids)]
    held = lake.read_table(layout, "events", ["event_id"])["event_id"].to_pylist()
    mixed = random.Random(1).sample(held, 5) + new[5:]
    print(f"lake: {lake.row_count(layout, 'events'):,} events, {lake.row_count(layout, 'usage'):,} usage rows")
    for label, ids, expected in (("new ids", new, 0), ("5 held", mixed, 5), ("new ids", new, 0)):
        keys = LakeKeys(layout, pinned)
        started = time.perf_counter()
        found = keys.event_hashes(ids)
        seconds = time.perf_counter() - started
        assert len(found) == expected, (label, len(found))
        print(f"{label:>8}: {seconds:.2f} s, {len(found)} found")


if __name__ == "__main__":
    main()
