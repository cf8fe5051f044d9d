"""The warehouse stage (lake copy + dbt build + quality gate + publish), full vs incremental.

    .venv/bin/python benchmarks/bench_warehouse.py --data-dir DIR [--batch-events 1000]

DIR holds a lake already ingested (e.g. by ``revenue generate`` + ``revenue ingest``). The script
runs ``revenue metrics`` if needed, then ``revenue transform --full-refresh``; then two batches,
each ingested, run through ``revenue metrics`` and timed through ``revenue transform``
(incremental): recent events (usage and paid invoices on the latest day, existing customers), then
late events (the same, on random days over the whole history); finally it checks that the
incremental warehouse equals another ``--full-refresh`` build, every table row for row. Each
command runs in its own process; peak RSS is that process's and its children's (dbt) maximum.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import duckdb

REPO = Path(__file__).resolve().parent.parent


def revenue(*args: str) -> tuple[float, int]:
    """Run a ``revenue`` command; (seconds, peak RSS in MB of it and its children)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", *args], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"revenue {' '.join(args)} failed ({proc.returncode}):\n{out.decode()[-3000:]}")
    return seconds, usage.ru_maxrss // 1024


def latest(data: Path, command: str) -> dict:
    return json.loads(sorted((data / "runs").glob(f"*-{command}.json"))[-1].read_text())


def write_batch(data: Path, out: Path, events: int, late: bool, seed: int) -> None:
    """``events`` new events for existing customers, half usage and half paid invoices: on the lake's
    latest day (recent), or on random days over its whole history (late events for every month)."""
    con = duckdb.connect(str(data / "warehouse" / "revenue.duckdb"), read_only=True)
    first, last = con.execute("select min(cast(occurred_at as date)), max(cast(occurred_at as date)) "
                              "from lake.events").fetchall()[0]  # fmt: skip
    payers = con.execute("select customer_id, subscription_id, currency from lake.events "
                         "where event_type = 'invoice.paid' and subscription_id is not null "
                         "order by occurred_at desc, event_id limit 5000").fetchall()  # fmt: skip
    con.close()
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "batch.jsonl", "w") as handle:
        for i in range(events):
            day = first + dt.timedelta(days=rng.randrange((last - first).days + 1)) if late else last
            at = f"{day.isoformat()}T12:00:00Z"
            customer, subscription, currency = rng.choice(payers)
            if i % 2:
                event = {"event_id": f"bench-usage-{seed}-{i}", "event_type": "usage.recorded", "occurred_at": at,
                         "customer_id": customer, "meter": "api_calls", "quantity": rng.randint(1, 1000)}  # fmt: skip
            else:
                event = {"event_id": f"bench-invoice-{seed}-{i}", "event_type": "invoice.paid", "occurred_at": at,
                         "customer_id": customer, "subscription_id": subscription, "invoice_id": f"bench-in-{seed}-{i}",
                         "currency": currency, "amount": rng.randint(100, 100000), "tax": 0}  # fmt: skip
            handle.write(json.dumps(event) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--batch-events", type=int, default=1000)
    args = parser.parse_args()
    data = args.data_dir.absolute()
    rows = []
    if not (data / "lake" / "customer_lifetime").is_dir():
        revenue("metrics", "--data-dir", str(data))

    def transform(label: str, *flags: str) -> None:
        seconds, rss = revenue("transform", "--data-dir", str(data), *flags)
        m = latest(data, "transform")
        gate = json.loads((data / "quality" / "latest.json").read_text())
        rows.append((label, m["lake_load"]["mode"], seconds, m["lake_load"]["seconds"], m["dbt_seconds"],
                     gate["seconds"], rss, m["lake_load"]["changed_customers"], m["lake_load"]["changed_days"]))  # fmt: skip

    transform("full build", "--full-refresh")
    for seed, late in ((5, False), (6, True)):
        batch = data.parent / f"{data.name}-batch-{seed}"
        shutil.rmtree(batch, ignore_errors=True)
        write_batch(data, batch, args.batch_events, late, seed)
        revenue("ingest", "--input", str(batch), "--data-dir", str(data))
        revenue("metrics", "--data-dir", str(data))
        transform(f"{args.batch_events:,} {'late' if late else 'recent'} events")
    incremental = data.parent / f"{data.name}-incremental.duckdb"
    shutil.copy(data / "warehouse" / "revenue.duckdb", incremental)
    transform("full build again", "--full-refresh")
    sys.path.insert(0, str(REPO))
    from pipelines.warehouse_lake import table_differences

    differences = table_differences(incremental, data / "warehouse" / "revenue.duckdb")
    print(f"{'transform':<22} {'mode':<12} {'total s':>8} {'lake copy s':>12} {'dbt s':>7} {'gate s':>7} "
          f"{'peak RSS MB':>12} {'changed customers':>18} {'changed days':>13}")  # fmt: skip
    for label, mode, total, load, dbt, gate, rss, customers, days in rows:
        print(f"{label:<22} {mode:<12} {total:>8.1f} {load:>12.1f} {dbt:>7.1f} {gate:>7.1f} {rss:>12,} "
              f"{customers:>18,} {days:>13,}")  # fmt: skip
    print("incremental == full refresh, every table row for row:", "yes" if not differences else differences)
    incremental.unlink()


if __name__ == "__main__":
    main()
