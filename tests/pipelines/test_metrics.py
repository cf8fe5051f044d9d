"""`revenue metrics` against the generator's independent MRR oracle."""

import csv
import datetime as dt
import json
import random
import shutil
import subprocess
import sys
from collections import defaultdict
from decimal import Decimal

import pyarrow.compute as pc
import pytest
from conftest import REPO, cfg, truth

from pipelines import lake
from pipelines.ingest import run_ingest
from pipelines.layout import DataLayout
from pipelines.metrics import run_metrics
from transforms.errors import ConfigError


@pytest.fixture(scope="module")
def metrics_run(ingested):
    data_dir, _ = ingested
    result = run_metrics(cfg(data_dir))
    return data_dir, result


def expected_rows(generated):
    with open(generated / "expected_mrr.csv") as handle:
        return {(r["customer_id"], r["month"]): Decimal(r["mrr"]) for r in csv.DictReader(handle)}


def lake_months(data_dir):
    t = lake.read_table(DataLayout(data_dir), "customer_months")
    return {(r["customer_id"], r["month"].isoformat()): r for r in t.to_pylist()}


def test_mrr_equals_ground_truth_for_every_customer_month(generated, metrics_run):
    data_dir, result = metrics_run
    assert result.as_of.isoformat() == truth(generated)["as_of"]
    expected = expected_rows(generated)
    got = lake_months(data_dir)
    assert set(got) == set(expected)
    mismatches = [k for k in expected if got[k]["mrr"] != expected[k]]
    assert mismatches == []


def test_movements_recomputed_from_ground_truth(generated, metrics_run):
    data_dir, _ = metrics_run
    expected = expected_rows(generated)
    by_customer = defaultdict(list)
    for (customer, month), mrr in sorted(expected.items()):
        by_customer[customer].append((month, mrr))
    want = {}
    for customer, rows in by_customer.items():
        prev, paid_before = Decimal(0), False
        for month, m in rows:
            if m > 0 and prev == 0:
                move = "reactivation" if paid_before else "new"
            elif prev > 0 and m == 0:
                move = "churn"
            elif prev > 0 and m > prev:
                move = "expansion"
            elif 0 < m < prev:
                move = "contraction"
            else:
                move = "unchanged"
            want[(customer, month)] = move
            paid_before = paid_before or m > 0
            prev = m
    got = lake_months(data_dir)
    assert {k: v["movement"] for k, v in got.items()} == want
    kinds = set(want.values())
    assert {"new", "expansion", "contraction", "churn", "reactivation"} <= kinds


def test_bridge_identity_holds_every_month(metrics_run):
    data_dir, _ = metrics_run
    by_month = defaultdict(lambda: defaultdict(Decimal))
    for (_, month), r in lake_months(data_dir).items():
        by_month[month]["mrr"] += r["mrr"]
        by_month[month]["prev"] += r["previous_mrr"]
        by_month[month]["change"] += r["mrr_change"]
        by_month[month][r["movement"]] += r["mrr_change"]
    for _month, t in by_month.items():
        assert t["mrr"] == t["prev"] + t["new"] + t["reactivation"] + t["expansion"] + t["contraction"] + t["churn"]


def test_revenue_and_lifetime_are_consistent(metrics_run):
    data_dir, _ = metrics_run
    months = lake.read_table(DataLayout(data_dir), "customer_months")
    lifetime = lake.read_table(DataLayout(data_dir), "customer_lifetime")
    assert lifetime.num_rows == len(pc.unique(months["customer_id"]))
    total_net = pc.sum(months["net_revenue"]).as_py()
    assert pc.sum(lifetime["lifetime_revenue"]).as_py() == total_net
    assert total_net > 0
    for r in months.to_pylist():
        assert r["net_revenue"] == r["revenue_paid"] - r["tax"] - r["refunds"]


def test_out_of_order_input_gives_the_same_customer_months(generated, metrics_run, tmp_path):
    data_dir, _ = metrics_run
    shuffled = tmp_path / "shuffled"
    rng = random.Random(3)
    files = sorted((generated / "events").rglob("*.jsonl")) + sorted((generated / "events").rglob("*.jsonl.gz"))
    import gzip
    lines = []
    for f in files:
        opener = gzip.open if f.suffix == ".gz" else open
        with opener(f, "rb") as h:
            lines.extend(h.read().splitlines())
    # keep each first occurrence before its later duplicates/conflicts only where it matters: dedup keeps the
    # first in input order, so put every line in one order-preserving pass but reverse the chronology of files
    good = [ln for ln in lines if ln.startswith(b'{"event_id":"evt_')]
    rng.shuffle(good)
    for i in range(5):
        (shuffled / f"p{i}").mkdir(parents=True)
        (shuffled / f"p{i}" / f"z-{i}.jsonl").write_bytes(b"\n".join(good[i::5]) + b"\n")
    other = tmp_path / "data"
    run_ingest(cfg(other, input_dir=shuffled), checksums=False)
    run_metrics(cfg(other))
    a, b = lake_months(data_dir), lake_months(other)
    assert a == b


@pytest.mark.slow
def test_two_worker_processes_write_the_same_customer_months(ingested, metrics_run, tmp_path):
    data_dir, _ = metrics_run
    copy = tmp_path / "data"
    shutil.copytree(data_dir / "lake", copy / "lake", ignore=shutil.ignore_patterns("customer_*"))
    run_metrics(cfg(copy, beam_args=["--direct_num_workers=2", "--direct_running_mode=multi_processing"]), shards=2)
    assert lake_months(copy) == lake_months(data_dir)


@pytest.mark.slow
def test_missing_fx_rate_is_a_clear_error(ingested, tmp_path):
    data_dir, _ = ingested
    fx = tmp_path / "fx.csv"
    fx.write_text("date,currency,rate\n2015-01-01,EUR,1.1\n2015-01-01,GBP,1.3\n2015-01-01,JPY,0.007\n")
    copy = tmp_path / "data"
    shutil.copytree(data_dir / "lake", copy / "lake")
    before = sorted(p.relative_to(copy) for p in (copy / "lake" / "customer_months").rglob("*.parquet"))
    with pytest.raises(ConfigError, match=r"no FX rate for KWD -> USD on or before \d{4}-\d\d-\d\d"):
        run_metrics(cfg(copy, fx_rates=fx))
    assert sorted(p.relative_to(copy) for p in (copy / "lake" / "customer_months").rglob("*.parquet")) == before
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "metrics", "--data-dir", str(copy), "--fx-rates",
                           str(fx)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1 and "KWD" in proc.stderr and "Traceback" not in proc.stderr


def test_explicit_as_of_cuts_the_months(ingested, tmp_path):
    data_dir, _ = ingested
    copy = tmp_path / "data"
    shutil.copytree(data_dir / "lake", copy / "lake")
    result = run_metrics(cfg(copy, as_of=dt.date(2024, 6, 15)))
    months = lake.read_table(DataLayout(copy), "customer_months")
    assert max(months["month"].to_pylist()) == dt.date(2024, 6, 1)
    assert result.as_of == dt.date(2024, 6, 15)
    _ = json
