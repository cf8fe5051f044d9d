"""Ingest benchmark: our Beam ingest vs DuckDB doing the same work, in the same run.

    python benchmarks/bench_ingest.py [--events 1000000] [--workdir /tmp/revenue-bench]
    python benchmarks/bench_ingest.py --events 10000000   # memory growth at 10M

Both sides read the same JSONL(.gz) files, apply the same validation rules (JSON,
required fields, event types, offsets on timestamps, non-negative integer amounts,
ISO 4217 currencies), drop duplicates by event_id keeping the first in file/line
order, and write hive-partitioned Parquet (events and usage by event date, dead
letters by reason). Each side runs in its own process; peak RSS is that process's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ensure_generated, measure  # noqa: E402

EVENTS_PER_CUSTOMER = 52  # generator average over 24 months

DUCKDB_SQL = r"""
import duckdb, glob, os
from iso4217 import Currency
files = sorted(glob.glob(INPUT + "/**/*.jsonl", recursive=True) + glob.glob(INPUT + "/**/*.jsonl.gz", recursive=True))
codes = [c.code for c in Currency if c.exponent is not None]
con = duckdb.connect()
con.execute("create temp table iso(code varchar)")
con.executemany("insert into iso values (?)", [(c,) for c in codes])
con.execute(f'''
create temp table lines as
select filename, row_number() over (partition by filename) as line_no, line
from read_csv({files!r}, columns={{'line': 'VARCHAR'}}, header=false, delim='\x01', quote='', escape='',
              filename=true, auto_detect=false, strict_mode=false, null_padding=true)
''')
con.execute('''
create temp table parsed as
with j as (
  select filename, line_no, line, try_cast(line as json) as j from lines
), f as (
  select *, j->>'event_id' as event_id, j->>'event_type' as event_type, j->>'occurred_at' as occurred_raw,
         j->>'customer_id' as customer_id, upper(j->>'currency') as currency,
         json_type(j->'amount') as amount_type, json_type(j->'unit_amount') as unit_type
  from j
)
select *,
  case
    when j is null or json_type(j) <> 'OBJECT' then 'malformed_json'
    when event_id is null or customer_id is null or event_type is null or occurred_raw is null then 'missing_field'
    when json_type(j->'customer_id') <> 'VARCHAR' or length(event_id) > 255 then 'invalid_field'
    when event_type not in ('customer.created','subscription.created','subscription.updated','subscription.canceled',
                            'invoice.paid','invoice.payment_failed','charge.refunded','usage.recorded') then 'unknown_event_type'
    when not regexp_matches(occurred_raw, '(Z|[+-]\d\d:\d\d)$') then 'naive_timestamp'
    when try_cast(occurred_raw as timestamptz) is null then 'invalid_timestamp'
    when event_type in ('invoice.paid','invoice.payment_failed','charge.refunded') and (amount_type not in ('UBIGINT','BIGINT')) then 'invalid_field'
    when event_type in ('subscription.created','subscription.updated') and (unit_type not in ('UBIGINT','BIGINT')) then 'invalid_field'
    when cast(j->>'amount' as bigint) < 0 or cast(j->>'unit_amount' as bigint) < 0 then 'negative_amount'
    when currency is not null and currency not in (select code from iso) then 'unknown_currency'
    else null
  end as reason
from f
''')
con.execute('''
create temp table ranked as
select *, cast(cast(occurred_raw as timestamptz) as date) as event_date, md5(cast(j as varchar)) as digest,
       first_value(md5(cast(j as varchar))) over (partition by event_id order by filename, line_no) as first_digest,
       row_number() over (partition by event_id order by filename, line_no) as rn
from parsed where reason is null
''')
os.makedirs(OUT, exist_ok=True)
con.execute(f"copy (select event_id, event_type, cast(occurred_raw as timestamptz) as occurred_at, customer_id, currency, cast(j->>'amount' as bigint) as amount, cast(j->>'unit_amount' as bigint) as unit_amount, j->>'subscription_id' as subscription_id, j->>'invoice_id' as invoice_id, cast(j as varchar) as payload, event_date from ranked where rn = 1 and event_type <> 'usage.recorded') to '{OUT}/events' (format parquet, partition_by (event_date), overwrite_or_ignore)")
con.execute(f"copy (select event_id, customer_id, j->>'meter' as meter, cast(j->>'quantity' as decimal(38,9)) as quantity, cast(occurred_raw as timestamptz) as occurred_at, event_date from ranked where rn = 1 and event_type = 'usage.recorded') to '{OUT}/usage' (format parquet, partition_by (event_date), overwrite_or_ignore)")
con.execute(f"copy (select filename, line_no, line, reason from parsed where reason is not null union all select filename, line_no, line, 'conflicting_duplicate' from ranked where rn > 1 and digest <> first_digest) to '{OUT}/dead_letter' (format parquet, partition_by (reason), overwrite_or_ignore)")
counts = con.execute("select count(*) filter (where rn = 1), count(*) filter (where rn > 1 and digest = first_digest) from ranked").fetchone()
result["written"], result["duplicates"] = counts
result["lines"] = con.execute("select count(*) from lines").fetchone()[0]
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/revenue-bench"))
    parser.add_argument("--skip-duckdb", action="store_true")
    args = parser.parse_args()
    src = args.workdir / f"input-{args.events}"
    truth = ensure_generated(src, max(1, args.events // EVENTS_PER_CUSTOMER))
    lines = truth["counts"]["lines"]
    print(f"input: {lines:,} lines ({src})")
    ours_dir = args.workdir / f"ours-{args.events}"
    shutil.rmtree(ours_dir, ignore_errors=True)
    ours = measure(f"""
        from pipelines.config import build_config
        from pipelines.ingest import run_ingest
        r = run_ingest(build_config({str(ours_dir)!r}, input_dir={str(src / 'events')!r}), checksums=False)
        result.update(r.counts())
    """)
    ok = ours["lines_read"] == lines and ours["rows_written"] == truth["counts"]["accepted"]
    print(f"ours  : {ours['seconds']:.1f}s (CPU {ours['cpu_seconds']:.1f}s)  {lines / ours['seconds']:,.0f} events/s"
          f"  peak RSS {ours['peak_rss_mb']:,.0f} MB"
          f"  (counts match ground truth: {ok})")
    if not args.skip_duckdb:
        duck_dir = args.workdir / f"duckdb-{args.events}"
        shutil.rmtree(duck_dir, ignore_errors=True)
        duck = measure(f"INPUT = {str(src / 'events')!r}\nOUT = {str(duck_dir)!r}\n" + DUCKDB_SQL)
        print(f"duckdb: {duck['seconds']:.1f}s (CPU {duck['cpu_seconds']:.1f}s)  {lines / duck['seconds']:,.0f} events/s"
              f"  peak RSS {duck['peak_rss_mb']:,.0f} MB"
              f"  (written {duck['written']:,})")
        print(f"ratio ours/duckdb time: {ours['seconds'] / duck['seconds']:.2f}x (goal <= 1.5x);"
              f" CPU time: {ours['cpu_seconds'] / duck['cpu_seconds']:.2f}x")
    print(json.dumps({"events": lines, "ours": ours, **({} if args.skip_duckdb else {"duckdb": duck})}, default=str))


if __name__ == "__main__":
    main()
