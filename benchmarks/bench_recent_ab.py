"""Recent batches of `revenue run` on an existing lake, alternating two checkouts: is a change slower?

    python benchmarks/bench_recent_ab.py --events 1000000 --base /path/to/other/checkout
                                         [--rounds 4] [--batch 1000] [--workdir /tmp/revenue-bench-run]

Uses the lake `bench_run.py --events N --workdir DIR` left (run that first). Each round runs one
batch of --batch recent events (fresh event ids: every event is new) with this checkout and one
with --base (the CLI imports the checkout named by PYTHONPATH), alternating which goes first, so
both see the same machine and a lake that grows alike. Prints each run's time, stages and peaks,
then the median of each side. Single runs on a shared machine move by a few seconds: compare
medians.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_run  # noqa: E402
from common import REPO  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--base", type=Path, required=True, help="the other checkout (its repository root)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/revenue-bench-run"))
    args = parser.parse_args()
    work = args.workdir / f"{args.events}"
    data = work / "data"
    if not (data / "lake").is_dir():
        raise SystemExit(f"no lake at {data}: run bench_run.py --events {args.events} --workdir {args.workdir} first")
    sides = [("this", REPO), ("base", args.base.resolve())]
    latest, known, months = bench_run.lake_facts(data)
    rng = random.Random(os.getpid())
    seconds: dict[str, list[float]] = {name: [] for name, _ in sides}
    for r in range(args.rounds):
        for name, checkout in sides if r % 2 == 0 else sides[::-1]:
            folder = bench_run.recent_batch(work / "recent-ab", args.batch, latest, known, rng)
            batch = folder / "batch.jsonl"
            batch.write_text(batch.read_text().replace("bench_recent_", f"ab{os.getpid()}_{name}_{r}_"))
            os.environ["PYTHONPATH"] = str(checkout)
            result = bench_run.run(data, folder)
            load = Path("/proc/loadavg").read_text().split()[0]
            seconds[name].append(result["seconds"])
            stages = ", ".join(f"{k} {v:.1f}" for k, v in result["timings"].items())
            print(f"round {r} {name}: {result['seconds']:.1f}s (load {load}), peak {result['peak_rss_mb']:,.0f} MB; "
                  f"{stages}; peaks {result['peaks']}", flush=True)  # fmt: skip
    for name, values in seconds.items():
        ordered = sorted(values)
        print(f"{name}: median {ordered[len(ordered) // 2]:.1f}s of {[round(v, 1) for v in values]}")


if __name__ == "__main__":
    main()
