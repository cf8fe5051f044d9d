"""The dbt warehouse: contract tables against the ground truth, atomic publish, failing builds."""

import csv
import hashlib
import shutil
import subprocess
import sys
import threading
from collections import defaultdict
from decimal import ROUND_HALF_UP, Decimal

import duckdb
import pyarrow as pa
import pytest
from conftest import REPO, cfg, commit_rows

from pipelines import lake
from pipelines.layout import DataLayout
from pipelines.transform import CONTRACT_TABLES, run_transform

CONTRACT_COLUMNS = {
    "fct_mrr": ["customer_id", "month", "mrr", "previous_mrr", "mrr_change", "movement", "is_active"],
    "mrr_monthly": ["month", "mrr", "arr", "active_customers", "new_mrr", "expansion_mrr", "reactivation_mrr",
                    "contraction_mrr", "churned_mrr", "net_new_mrr", "new_customers", "reactivated_customers",
                    "churned_customers", "customer_churn_rate", "gross_mrr_churn_rate", "net_mrr_churn_rate", "arpa",
                    "quick_ratio", "ltv"],
    "dim_customers": ["customer_id", "first_paid_month", "last_churn_month", "current_mrr", "lifetime_revenue",
                      "predicted_ltv", "status", "country", "segment"],
    "fct_revenue_daily": ["date", "currency", "gross_revenue", "tax", "refunds", "net_revenue", "net_revenue_reporting"],
    "fct_usage_monthly": ["customer_id", "month", "meter", "quantity", "usage_revenue"],
    "fct_cohort_retention": ["cohort_month", "months_since_start", "customers", "retained_customers", "logo_retention",
                             "net_mrr_retention", "gross_mrr_retention"],
}


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


class ProjectCopy:
    """The published build's dbt project and warehouse copied under ``root`` (the warehouse under the
    catalog name the sources use), for ``dbt test`` runs that may change the copy, never the original."""

    def __init__(self, data, root):
        layout = DataLayout(data)
        self.root = root
        self.project = root / "project"
        shutil.copytree(layout.dbt_workspace / "project", self.project)
        self.warehouse = root / "build" / layout.warehouse.name
        self.warehouse.parent.mkdir()
        shutil.copy(layout.warehouse, self.warehouse)

    def dbt_test(self, *args: str) -> subprocess.CompletedProcess:
        """``dbt test --select ARGS`` on the copy: node selectors, then any other options."""
        import os

        from pipelines.transform import dbt_executable

        env = dict(os.environ, DO_NOT_TRACK="1", REVENUE_WAREHOUSE_BUILD=str(self.warehouse))
        return subprocess.run([dbt_executable(), "test", "--project-dir", str(self.project), "--profiles-dir",
                               str(self.project), "--target-path", str(self.root / "target"), "--log-path",
                               str(self.root / "logs"), "--select", *args],
                              capture_output=True, text=True, env=env)  # fmt: skip

    def results(self) -> list[dict]:
        import json

        return json.loads((self.root / "target" / "run_results.json").read_text())["results"]


def truth_by_customer(generated):
    rows = defaultdict(list)
    with open(generated / "expected_mrr.csv") as handle:
        for r in csv.DictReader(handle):
            rows[r["customer_id"]].append((r["month"], Decimal(r["mrr"])))
    return rows


def test_contract_tables_and_columns_exist_with_decimal_money(published):
    data_dir = published
    con = duckdb.connect(str(DataLayout(data_dir).warehouse), read_only=True)
    for table, columns in CONTRACT_COLUMNS.items():
        present = {r[0]: r[1] for r in con.execute(
            "select column_name, data_type from information_schema.columns where table_name = ?", [table]).fetchall()}
        assert set(columns) <= set(present), (table, set(columns) - set(present))
        assert not [c for c, t in present.items() if t in ("DOUBLE", "FLOAT", "REAL")], (table, present)
        assert con.execute(f"select count(*) from {table}").fetchone()[0] > 0
    assert present  # noqa
    assert set(CONTRACT_TABLES) == set(CONTRACT_COLUMNS)


def test_fct_mrr_equals_ground_truth(generated, published):
    data_dir = published
    expected = {}
    for customer, rows in truth_by_customer(generated).items():
        paid = [i for i, (_, m) in enumerate(rows) if m > 0]
        if not paid:
            continue
        last = paid[-1]
        end = last + 1 if last + 1 < len(rows) else last  # through the churn month after the last paid month
        for month, mrr in rows[paid[0]: end + 1]:
            expected[(customer, month)] = mrr
    con = duckdb.connect(str(DataLayout(data_dir).warehouse), read_only=True)
    got = {(c, m.isoformat()): v for c, m, v in con.execute('select customer_id, "month", mrr from fct_mrr').fetchall()}
    assert got == expected


def test_mrr_monthly_equals_independent_recomputation(generated, published):
    data_dir = published
    per_month = defaultdict(dict)
    for customer, rows in truth_by_customer(generated).items():
        for month, mrr in rows:
            per_month[month][customer] = mrr
    months = sorted(per_month)
    want, prev, churn_rates = {}, {}, []
    ever_paid = set()
    for month in months:
        cur = per_month[month]
        movements = defaultdict(Decimal)
        churned = 0
        for c in set(cur) | set(prev):
            p, m = prev.get(c, Decimal(0)), cur.get(c, Decimal(0))
            if m > 0 and p == 0:
                movements["reactivation" if c in ever_paid else "new"] += m
            elif p > 0 and m == 0:
                movements["churn"] += p
                churned += 1
            elif p > 0 and m > p:
                movements["expansion"] += m - p
            elif 0 < m < p:
                movements["contraction"] += p - m
        mrr = sum(cur.values(), Decimal(0))
        prev_mrr = sum(prev.values(), Decimal(0))
        active = sum(1 for v in cur.values() if v > 0)
        prev_active = sum(1 for v in prev.values() if v > 0)
        churn_rate = Decimal(churned) / prev_active if prev_active else None
        arpa = (mrr / active).quantize(Decimal("0.01"), ROUND_HALF_UP) if active else None
        trailing = [r for r in churn_rates[-6:] if r is not None]
        mean = sum(trailing, Decimal(0)) / len(trailing) if trailing else None
        ltv = (arpa / mean).quantize(Decimal("0.01"), ROUND_HALF_UP) if arpa is not None and mean else None
        gross = (movements["churn"] + movements["contraction"]) / prev_mrr if prev_mrr else None
        want[month] = (mrr, active, movements["new"], movements["expansion"], movements["reactivation"],
                       movements["contraction"], movements["churn"], churn_rate, gross, arpa, ltv)
        churn_rates.append(churn_rate)
        ever_paid |= {c for c, v in cur.items() if v > 0}
        prev = cur
    con = duckdb.connect(str(DataLayout(data_dir).warehouse), read_only=True)
    got = con.execute('select "month", mrr, active_customers, new_mrr, expansion_mrr, reactivation_mrr, '
                      'contraction_mrr, churned_mrr, customer_churn_rate, gross_mrr_churn_rate, arpa, ltv '
                      'from mrr_monthly order by 1').fetchall()
    q = Decimal("1e-10")
    first_paid = min(m for m in months if any(v > 0 for v in per_month[m].values()))
    for row in got:
        month = row[0].isoformat()
        if month < first_paid:
            continue
        w = want[month]
        assert row[1:8] == w[:7], month
        for got_rate, want_rate in zip(row[8:10], w[7:9], strict=True):
            assert (got_rate is None) == (want_rate is None), month
            if want_rate is not None:
                assert abs(got_rate - want_rate) <= q, month
        assert row[10] == w[9], month
        # LTV from rates rounded to 10 dp: equal to the cent except for a rounding boundary
        assert (row[11] is None) == (w[10] is None), month
        if w[10] is not None:
            assert abs(row[11] - w[10]) <= Decimal("0.01"), month


def test_reader_sees_only_complete_versions_during_transform(published):
    data_dir = published
    warehouse = DataLayout(data_dir).warehouse
    reader = duckdb.connect(str(warehouse), read_only=True)
    before = reader.execute("select sum(mrr), count(*) from mrr_monthly").fetchone()
    errors, views = [], []
    done = threading.Event()

    def build():
        try:
            run_transform(cfg(data_dir))
        except Exception as exc:  # surfaced below
            errors.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=build)
    thread.start()
    while not done.is_set():
        # the held connection keeps reading the old, complete version
        views.append(reader.execute("select sum(mrr), count(*) from mrr_monthly").fetchone())
        fresh = duckdb.connect(str(warehouse), read_only=True)  # a new reader sees old or new, whole
        total, facts = fresh.execute("select (select sum(mrr) from mrr_monthly), (select sum(mrr) from fct_mrr)").fetchone()
        assert total == facts
        fresh.close()
        done.wait(0.2)  # poll again, or stop as soon as the build ends
    thread.join()
    assert errors == []
    assert set(views) == {before}
    after = duckdb.connect(str(warehouse), read_only=True)
    assert after.execute("select sum(mrr), count(*) from mrr_monthly").fetchone() == before
    reader.close()


@pytest.mark.slow
def test_failing_dbt_test_leaves_published_file_untouched(published, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(published / "lake", copy / "lake")
    shutil.copytree(published / "warehouse", copy / "warehouse")
    published = DataLayout(copy).warehouse
    digest = sha(published)
    # a customer-month with an illegal movement: dbt's accepted_values test must fail
    table = lake.read_table(DataLayout(copy), "customer_months")
    bad = table.slice(0, 1).set_column(table.schema.get_field_index("movement"), "movement", pa.array(["bogus"]))
    bad = bad.set_column(0, "customer_id", pa.array(["cus_broken"]))
    commit_rows(copy, "customer_months", bad)
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "transform", "--data-dir", str(copy), "--no-gate"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1, proc.stderr
    assert "accepted_values" in proc.stderr and "stg_customer_months" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sha(published) == digest


def test_column_rules_name_each_broken_rule_and_check_only_recomputed_customers_when_incremental(published, tmp_path):
    """One test node per model checks its not_null, non_negative and accepted_values rules
    (``column_rules``): each broken rule is a failing row naming it; in an incremental build, only
    the customers the build recomputed are checked (the others passed when they were built)."""
    import json

    copy = ProjectCopy(published, tmp_path)
    warehouse = copy.warehouse
    con = duckdb.connect(str(warehouse))
    a, b, c = [r[0] for r in con.execute("select distinct customer_id from fct_mrr order by 1 limit 3").fetchall()]
    con.execute("update fct_mrr set mrr = -1 where customer_id = ? and month = (select min(month) from fct_mrr "
                "where customer_id = ?)", [a, a])  # fmt: skip
    con.execute("update fct_mrr set movement = 'bogus' where customer_id = ?", [b])
    con.execute("update fct_mrr set previous_mrr = null where customer_id = ?", [c])
    con.close()

    def failures(mode: str, changed: list[str]) -> set:
        con = duckdb.connect(str(warehouse))
        con.execute("delete from lake.changed_customers")
        con.execute("insert into lake.changed_customers select unnest(?::varchar[])", [changed])
        con.execute("update lake._load_state set state = json_merge_patch(state, ?)", [json.dumps({"mode": mode})])
        con.close()
        proc = copy.dbt_test("fct_mrr_column_rules", "--store-failures")
        assert proc.returncode == 1, proc.stdout + proc.stderr
        con = duckdb.connect(str(warehouse), read_only=True)
        rows = con.execute("select rule, column_name, failing_rows from main_dbt_test__audit.fct_mrr_column_rules")
        found = set(rows.fetchall())
        con.close()
        return found

    con = duckdb.connect(str(warehouse), read_only=True)
    months_of_b, months_of_c = (con.execute("select count(*) from fct_mrr where customer_id = ?", [x]).fetchall()[0][0]
                                for x in (b, c))  # fmt: skip
    con.close()
    assert failures("full", []) == {("non_negative", "mrr", 1), ("accepted_values", "movement", months_of_b),
                                    ("not_null", "previous_mrr", months_of_c)}  # fmt: skip
    assert failures("incremental", [a, c]) == {("non_negative", "mrr", 1), ("not_null", "previous_mrr", months_of_c)}


def test_dbt_unit_tests_pass_and_no_build_runs_them(published, tmp_path):
    """The models' unit tests (fixed fixtures, whatever the data) run here, as dbt recommends, and
    in no build: every one defined in the project runs and passes; the published build ran none."""
    import json

    import yaml

    layout = DataLayout(published)
    built = json.loads((layout.dbt_workspace / "target" / "run_results.json").read_text())["results"]
    assert built and not [r["unique_id"] for r in built if r["unique_id"].startswith("unit_test.")]
    defined = {t["name"] for path in (REPO / "dbt_project" / "models").rglob("*.yml")
               for t in (yaml.safe_load(path.read_text()) or {}).get("unit_tests", [])}  # fmt: skip
    assert len(defined) >= 5
    copy = ProjectCopy(published, tmp_path)  # unit tests read their inputs' column types from its warehouse
    proc = copy.dbt_test("test_type:unit")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ran = copy.results()
    assert {r["unique_id"].rsplit(".", 1)[-1]: r["status"] for r in ran} == dict.fromkeys(defined, "pass")
