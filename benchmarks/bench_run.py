"""`revenue run` as a lake grows: a full run, then a batch of recent events, then a batch of late events.

    python benchmarks/bench_run.py [--events 1000000] [--batch 1000] [--workdir /tmp/revenue-bench-run]

Generates (or reuses) --events lines with the bundled generator, runs `revenue run` on them into
a fresh data dir (the full run), then two incremental runs on the same data dir:
- recent: --batch new events (invoices paid and usage) for existing customers on the lake's
  latest event day, the shape of a nightly or micro-batch run;
- late: --batch new events spread over every month of the history (usage and refunds dated
  in each past month), the worst case for an incremental run.
For each run it prints the wall time of every stage (from the run manifest), the peak RSS of
the largest process (the run or its dbt child, measured by the kernel through wait4) and the
ratio to the full run, all measured in this one invocation. Run it at 1M and 10M to compare.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import resource
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, ensure_generated  # noqa: E402

EVENTS_PER_CUSTOMER = 51.7  # the generator's mix: 19,300 customers over 24 months give ~1M lines
REVENUE = str(Path(sys.executable).with_name("revenue"))


def run(data_dir: Path, input_dir: Path, *extra: str) -> dict:
    """One `revenue run` in a child process: wall time, the largest process's peak RSS, stage timings."""
    before = set((data_dir / "runs").glob("*-run.json")) if (data_dir / "runs").is_dir() else set()
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child execs the CLI; wait4 gives its rusage (and that of the children it waited for)
        os.execv(REVENUE, [REVENUE, "run", "--quiet", "--input", str(input_dir), "--data-dir", str(data_dir),
                           *extra])  # fmt: skip
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"revenue run exited {os.waitstatus_to_exitcode(status)}")
    manifest = sorted(set((data_dir / "runs").glob("*-run.json")) - before)[-1]
    summary = json.loads(manifest.read_text())
    return {"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024, "timings": summary.get("timings", {}),
            "metrics": summary.get("metrics", {}), "peaks": summary.get("peak_rss_mb", {})}  # fmt: skip


def lake_facts(data_dir: Path) -> tuple[dt.date, list[str], list[dt.date]]:
    """The latest event day, the customers, and the months with events."""
    from pipelines import lake
    from pipelines.layout import DataLayout

    layout = DataLayout(data_dir)
    latest = lake.latest_event_day(layout)
    customers = lake.read_table(layout, "customer_lifetime", ["customer_id"])["customer_id"].to_pylist()
    months = sorted({dt.date(d.year, d.month, 1) for d in lake.partition_values(layout, "events")})
    return latest, sorted(customers), months


def write_batch(folder: Path, lines: list[dict]) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "batch.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder


def recent_batch(folder: Path, n: int, day: dt.date, customers: list[str], rng: random.Random) -> Path:
    lines = []
    for i in range(n):
        at = dt.datetime.combine(day, dt.time(rng.randrange(24), rng.randrange(60)), dt.UTC)
        customer = rng.choice(customers)
        if i % 2:
            lines.append({"event_id": f"bench_recent_{i}", "event_type": "usage.recorded",
                          "occurred_at": at.strftime("%Y-%m-%dT%H:%M:%SZ"), "customer_id": customer,
                          "meter": "api_calls", "quantity": rng.randrange(1, 500)})  # fmt: skip
        else:
            lines.append({"event_id": f"bench_recent_{i}", "event_type": "invoice.paid",
                          "occurred_at": at.strftime("%Y-%m-%dT%H:%M:%SZ"), "customer_id": customer,
                          "invoice_id": f"in_bench_recent_{i}", "currency": "USD", "amount": 2900, "tax": 0})  # fmt: skip
    return write_batch(folder, lines)


def late_batch(folder: Path, n: int, months: list[dt.date], customers: list[str], rng: random.Random) -> Path:
    lines = []
    for i in range(n):
        month = months[i % len(months)]
        at = dt.datetime.combine(month + dt.timedelta(days=rng.randrange(27)), dt.time(12), dt.UTC)
        lines.append({"event_id": f"bench_late_{i}", "event_type": "usage.recorded",
                      "occurred_at": at.strftime("%Y-%m-%dT%H:%M:%SZ"), "customer_id": rng.choice(customers),
                      "meter": "api_calls", "quantity": rng.randrange(1, 500)})  # fmt: skip
    return write_batch(folder, lines)


def show(name: str, result: dict, full: dict | None) -> None:
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in result["timings"].items())
    ratio = f" = {result['seconds'] / full['seconds']:.2f}x the full run" if full else ""
    metrics = result.get("metrics") or {}
    mode = f" [metrics {metrics.get('mode')}: {metrics.get('customers_recomputed')} customers]" if metrics else ""
    peaks = ", ".join(f"{k} {v}" for k, v in result.get("peaks", {}).items() if v is not None)
    print(f"{name:>7}: {result['seconds']:7.1f}s{ratio}, peak RSS {result['peak_rss_mb']:,.0f} MB{mode}\n"
          f"         stages: {stages}\n"
          f"         peak RSS (MB) of the run process after each stage, and of its children: {peaks}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/revenue-bench-run"))
    parser.add_argument("--input", type=Path, help="use this generated input folder instead")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    customers = max(1, round(args.events / EVENTS_PER_CUSTOMER))
    work = args.workdir / f"{args.events}"
    if args.input:
        events = args.input
    else:
        ensure_generated(work / "input", customers, seed=args.seed)
        events = work / "input" / "events"
    data = work / "data"
    shutil.rmtree(data, ignore_errors=True)
    truth = events.parent / "ground_truth.json"
    if truth.exists():
        customers = json.loads(truth.read_text())["customers"]
    print(f"revenue run on {args.events:,} generated events ({customers:,} customers), repo {REPO}")
    full = run(data, events)
    show("full", full, None)
    latest, known, months = lake_facts(data)
    rng = random.Random(args.seed)
    recent = run(data, recent_batch(work / "recent", args.batch, latest, known, rng))
    show("recent", recent, full)
    late = run(data, late_batch(work / "late", args.batch, months, known, rng))
    show("late", late, full)
    print(f"max RSS of any child in this benchmark: {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:,.0f} MB")
    print("BENCH " + json.dumps({"events": args.events, "full": full, "recent": recent, "late": late}, default=str))


if __name__ == "__main__":
    main()
