"""Metrics benchmark: our Beam metrics stage vs DuckDB SQL computing the same customer-month facts.

    python benchmarks/bench_metrics.py [--events 1000000] [--workdir /tmp/revenue-bench] [--workers 1]

Reuses (or creates) the generated input and our ingested lake from bench_ingest.py. Both
sides compute, from the same lake Parquet, per customer and month from the first event
month to the as-of month: MRR at month end (subscription states replayed, FX at the
state's day, rounded per subscription), invoices paid, tax, refunds and failed
payments converted per transaction, usage per meter, and the movement. Prints times,
peak memory, and the number of customer-months whose MRR differs from the generator's
ground truth (ours and DuckDB's).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ensure_generated, measure  # noqa: E402

EVENTS_PER_CUSTOMER = 52

DUCKDB_METRICS = r"""
import csv, duckdb
from transforms.fx import load_fx
fx = load_fx("USD")
con = duckdb.connect()
con.execute("create table fx(valid_from date, currency varchar, rate decimal(28,10))")
con.executemany("insert into fx values (?, ?, ?)", [(d, c, r) for d, c, r in fx.rows()])
lake = LAKE
from deltalake import DeltaTable
con.register("ev", DeltaTable(lake + "/events").to_pyarrow_dataset())  # the committed version, offline
con.register("us", DeltaTable(lake + "/usage").to_pyarrow_dataset())
as_of = con.execute("select max(cast(occurred_at as date)) from (select occurred_at from ev union all select occurred_at from us)").fetchone()[0]
con.execute(f"create table params as select date '{as_of}' as as_of, cast(date '{as_of}' + interval 1 day as timestamptz) as as_of_end")
con.execute('''
create table firsts as
select customer_id, cast(date_trunc('month', min(occurred_at)) as date) as first_month
from (select customer_id, occurred_at from ev union all select customer_id, occurred_at from us) group by 1
''')
con.execute('''
create table spine as
select f.customer_id, cast(m as date) as "month",
       least(cast(m + interval 1 month as timestamptz), (select as_of_end from params)) as boundary
from firsts f, range(f.first_month, cast(date_trunc('month', (select as_of from params)) + interval 1 month as date), interval 1 month) t(m)
''')
con.execute('''
create table states as
select customer_id, subscription_id, event_type, effective_at, occurred_at, event_id, currency, currency_exponent,
       unit_amount, quantity, "interval", interval_count,
       last_value(trial_end ignore nulls) over (partition by customer_id, subscription_id order by effective_at, occurred_at, event_id
                                                rows between unbounded preceding and current row) as trial_end
from ev where event_type like 'subscription.%' and occurred_at < (select as_of_end from params)
''')
con.execute('''
create table priced as
with f as (
  select s.*,
         case s."interval" when 'month' then 1 when 'year' then 1 when 'week' then 52 else 365 end as f_num,
         case s."interval" when 'month' then 1 else 12 end as f_den,
         cast(coalesce(fx.rate, case when s.currency = 'USD' then 1 end) * 10000000000 as hugeint) as rate_e10
  from states s asof left join fx on s.currency = fx.currency and cast(s.effective_at as date) >= fx.valid_from
), exact as (
  -- cents = unit * qty * f_num * rate / (f_den * interval_count * 10^exp), rounded half up, in integers
  select *, cast(unit_amount as hugeint) * quantity * f_num * rate_e10 * 100 as n,
         cast(f_den as hugeint) * interval_count * cast(power(10, currency_exponent) as hugeint) * 10000000000 as d
  from f
)
select exact.* exclude (n, d),
       case when event_type = 'subscription.canceled' then 0
            else cast((2 * n + d) // (2 * d) as decimal(38, 0)) * 0.01 end as mrr
from exact
''')
con.execute('''
create table sub_month as
with pairs as (
  select sp.customer_id, sp."month", sp.boundary, p.subscription_id
  from spine sp join (select distinct customer_id, subscription_id from priced) p using (customer_id)
)
select pairs.*, s.event_type, s.trial_end, s.mrr
from pairs asof left join priced s
  on pairs.customer_id = s.customer_id and pairs.subscription_id = s.subscription_id and pairs.boundary > s.effective_at
''')
con.execute('''
create table mrr as
select sp.customer_id, sp."month",
       coalesce(sum(case when sm.event_type <> 'subscription.canceled'
                          and (sm.trial_end is null or sm.trial_end < sp.boundary) then sm.mrr end), 0) as mrr
from spine sp left join sub_month sm on sp.customer_id = sm.customer_id and sp."month" = sm."month"
group by 1, 2
''')
con.execute('''
create table money as
select e.customer_id, cast(date_trunc('month', e.occurred_at) as date) as "month", e.event_type,
       round(e.amount * coalesce(fx.rate, 1) / power(10, e.currency_exponent), 2) as amt,
       round(coalesce(e.tax, 0) * coalesce(fx.rate, 1) / power(10, e.currency_exponent), 2) as tax
from ev e asof left join fx on e.currency = fx.currency and cast(e.occurred_at as date) >= fx.valid_from
where e.event_type in ('invoice.paid', 'charge.refunded', 'invoice.payment_failed')
''')
con.execute('''
create table customer_months as
with rev as (
  select customer_id, "month", sum(amt) filter (where event_type = 'invoice.paid') as revenue_paid,
         sum(tax) filter (where event_type = 'invoice.paid') as tax,
         sum(amt) filter (where event_type = 'charge.refunded') as refunds,
         count(*) filter (where event_type = 'invoice.payment_failed') as failed
  from money group by 1, 2
), use as (
  select customer_id, cast(date_trunc('month', occurred_at) as date) as "month", list({'meter': meter, 'quantity': q}) as usage
  from (select customer_id, occurred_at, meter, sum(quantity) over (partition by customer_id, date_trunc('month', occurred_at), meter) as q from us)
  group by 1, 2
)
select m.customer_id, m."month", m.mrr, coalesce(lag(m.mrr) over w, 0) as previous_mrr,
       case when m.mrr > 0 and coalesce(lag(m.mrr) over w, 0) = 0 then
              case when coalesce(max(m.mrr) over (partition by m.customer_id order by m."month" rows between unbounded preceding and 1 preceding), 0) > 0
                   then 'reactivation' else 'new' end
            when coalesce(lag(m.mrr) over w, 0) > 0 and m.mrr = 0 then 'churn'
            when m.mrr > coalesce(lag(m.mrr) over w, 0) then 'expansion'
            when m.mrr < coalesce(lag(m.mrr) over w, 0) then 'contraction' else 'unchanged' end as movement,
       rev.revenue_paid, rev.tax, rev.refunds, rev.failed, use.usage
from mrr m left join rev using (customer_id, "month") left join use using (customer_id, "month")
window w as (partition by m.customer_id order by m."month")
''')
con.execute(f"copy customer_months to '{OUT}' (format parquet, partition_by (\"month\"), overwrite_or_ignore)")
result["rows"] = con.execute("select count(*) from customer_months").fetchone()[0]
result["mismatches"] = con.execute(f'''
  select count(*) from read_csv('{TRUTH}', all_varchar=true) t
  full join customer_months c on c.customer_id = t.customer_id and c."month" = cast(t."month" as date)
  where c.mrr is distinct from cast(t.mrr as decimal(38,2))
''').fetchone()[0]
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/revenue-bench"))
    parser.add_argument("--workers", type=int, default=1, help="--metrics-workers for our side")
    args = parser.parse_args()
    src = args.workdir / f"input-{args.events}"
    truth = ensure_generated(src, max(1, args.events // EVENTS_PER_CUSTOMER))
    data = args.workdir / f"ours-{args.events}"
    if not (data / "lake" / "events").exists():
        print("ingesting the input first (bench_ingest.py not run yet)")
        shutil.rmtree(data, ignore_errors=True)
        measure(f"from pipelines.config import build_config\nfrom pipelines.ingest import run_ingest\n"
                f"run_ingest(build_config({str(data)!r}, input_dir={str(src / 'events')!r}), checksums=False)")
    ours = measure(f"""
        from pipelines.config import build_config
        from pipelines.metrics import run_metrics
        import duckdb
        # a full rebuild every time: a rerun on the same lake would otherwise find nothing changed
        r = run_metrics(build_config({str(data)!r}, full_refresh=True, metrics_workers={args.workers}),
                        write_run_manifest=False)
        assert r.mode == "full", r.mode
        result["workers"] = r.workers
        from pipelines import lake
        from pipelines.layout import DataLayout
        con = duckdb.connect()
        con.register("cm", lake.dataset(DataLayout({str(data)!r}), "customer_months"))
        result["rows"] = r.customer_months
        result["mismatches"] = con.execute('''
          select count(*) from read_csv('{src / 'expected_mrr.csv'}', all_varchar=true) t
          full join cm c
            on c.customer_id = t.customer_id and c."month" = cast(t."month" as date)
          where c.mrr is distinct from cast(t.mrr as decimal(38,6))''').fetchone()[0]
    """)
    out = args.workdir / f"duckdb-metrics-{args.events}"
    shutil.rmtree(out, ignore_errors=True)
    duck = measure(f"LAKE = {str(data / 'lake')!r}\nOUT = {str(out)!r}\nTRUTH = {str(src / 'expected_mrr.csv')!r}\n"
                   + DUCKDB_METRICS)
    events = truth["counts"]["accepted"]
    print(f"events in lake: {events:,}; customer-months: ours {ours['rows']:,}, duckdb {duck['rows']:,}")
    print(f"ours  : {ours['seconds']:.1f}s  peak RSS {ours['peak_rss_mb']:,.0f} MB (with its {ours['workers']} worker "
          f"process(es), summed: {ours['peak_tree_rss_mb']:,.0f} MB)  MRR mismatches vs ground truth: {ours['mismatches']}")
    print(f"duckdb: {duck['seconds']:.1f}s  peak RSS {duck['peak_rss_mb']:,.0f} MB  MRR mismatches vs ground truth: "
          f"{duck['mismatches']}")
    print(f"ratio ours/duckdb time: {ours['seconds'] / duck['seconds']:.2f}x (goal <= 2x, issue 13)")
    print(json.dumps({"ours": ours, "duckdb": duck}))


if __name__ == "__main__":
    main()
