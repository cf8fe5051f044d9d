"""Closed periods and restatements (CONTRACT section 7, issue 15) on small hand-written events.

Base data: Jan-Apr 2025 (as of 2025-04-10). Jan and Feb are closed; then a late subscription and a
late refund dated in February arrive. Expected by hand:

    Feb  reported: MRR 150.00 (c1 100 + c2 50), 2 active, new 50.00, net revenue 150.00
         restated: MRR 180.00 (+ c4 30), 3 active, new 80.00, net revenue 140.00 (refund of 10.00)
    Mar  first open month: live MRR 200.00 (c1 100, c2 50, c3 20, c4 30); adjustment +30.00, so
         150.00 (Feb as reported) + 30.00 + 20.00 (new c3) = 200.00
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
from decimal import Decimal

import duckdb
import pytest
from conftest import REPO, cfg, write_lines

from pipelines import lake
from pipelines.cli import main
from pipelines.closes import close_month, closed_months, reopen_month
from pipelines.ingest import run_ingest
from pipelines.layout import DataLayout
from pipelines.metrics import run_metrics
from pipelines.transform import run_transform

pytestmark = pytest.mark.slow  # each scenario builds a warehouse (dbt)

JAN, FEB, MAR, APR = (dt.date(2025, m, 1) for m in (1, 2, 3, 4))


def sub(event_id, customer, day, amount):
    return json.dumps({"event_id": event_id, "event_type": "subscription.created", "occurred_at": f"{day}T09:00:00Z",
                       "customer_id": customer, "subscription_id": f"sub_{customer}", "plan_id": "p",
                       "currency": "USD", "unit_amount": amount})  # fmt: skip


def paid(event_id, customer, day, amount):
    return json.dumps({"event_id": event_id, "event_type": "invoice.paid", "occurred_at": f"{day}T10:00:00Z",
                       "customer_id": customer, "invoice_id": f"in_{event_id}", "currency": "USD", "amount": amount,
                       "tax": 0})  # fmt: skip


BASE = [
    sub("e1", "c1", "2025-01-05", 10000), paid("p1", "c1", "2025-01-05", 10000),
    sub("e2", "c2", "2025-02-10", 5000), paid("p2", "c2", "2025-02-10", 5000),
    paid("p3", "c1", "2025-02-05", 10000),
    sub("e3", "c3", "2025-03-03", 2000), paid("p4", "c3", "2025-03-03", 2000),
    paid("p5", "c1", "2025-03-05", 10000), paid("p6", "c1", "2025-04-05", 10000),
    paid("p7", "c2", "2025-04-10", 5000),
]  # fmt: skip
LATE = [
    sub("late-sub", "c4", "2025-02-15", 3000),  # a backdated subscription in closed February
    json.dumps({"event_id": "late-refund", "event_type": "charge.refunded", "occurred_at": "2025-02-20T08:00:00Z",
                "customer_id": "c1", "invoice_id": "in_p3", "currency": "USD", "amount": 1000}),
]  # fmt: skip


def build(data_dir, events_dir=None, **options):
    if events_dir is not None:
        run_ingest(cfg(data_dir, input_dir=events_dir))
    run_metrics(cfg(data_dir, **options))
    return run_transform(cfg(data_dir, **options))


def query(data_dir, sql, params=()):
    con = duckdb.connect(str(DataLayout(data_dir).warehouse), read_only=True)
    try:
        cur = con.execute(sql, params)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    finally:
        con.close()


def cli(*args) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    return exit_info.value.code


def report_kpis(data_dir, month):
    from pipelines.report import build_report

    html = build_report(cfg(data_dir).resolve_as_of(), month)["html"].read_text()
    return dict(re.findall(r'data-kpi="(\w+)" data-value="([^"]*)"', html)), html


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("closes")
    write_lines(root / "base" / "events.jsonl", BASE)
    write_lines(root / "late" / "events.jsonl", LATE)
    data = root / "data"
    build(data, root / "base")
    return root, data


def copy_of(data, dest):
    shutil.copytree(data, dest)
    return dest


def test_months_close_in_order_and_the_as_of_month_cannot_close(base, tmp_path, capsys):
    root, data = base
    data = copy_of(data, tmp_path / "data")
    assert cli("close", "--month", "2025-02", "--by", "ana", "--data-dir", str(data)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "months close in order" in err and "2025-01 is still open" in err
    assert cli("close", "--month", "2025-04", "--by", "ana", "--data-dir", str(data)) == 1
    assert "only months before the as-of month (2025-04" in capsys.readouterr().err
    assert closed_months(DataLayout(data)) == {}
    assert cli("close", "--month", "2025-01", "--by", "ana", "--note", "Q1 prelim", "--data-dir", str(data)) == 0
    assert cli("close", "--month", "2025-01", "--by", "ana", "--data-dir", str(data)) == 1
    assert "already closed" in capsys.readouterr().err
    assert cli("reopen", "--month", "2025-02", "--by", "ana", "--reason", "x", "--data-dir", str(data)) == 1
    assert "it is not closed (it was never closed)" in capsys.readouterr().err
    assert cli("close", "--month", "2025-02", "--by", "bo", "--data-dir", str(data)) == 0
    assert list(closed_months(DataLayout(data))) == [JAN, FEB]
    # the published warehouse shows the closes at once (views over the lake's tables; no rebuild)
    rows = query(data, "select * from period_closes order by acted_at")
    assert [(r["month"], r["action"], r["acted_by"], r["note"]) for r in rows] == [
        (JAN, "close", "ana", "Q1 prelim"), (FEB, "close", "bo", None)]
    assert json.loads(rows[0]["lake_versions"])["events"] == lake.table_version(DataLayout(data), "events")
    reported = query(data, 'select "month", period_status from mrr_monthly_reported order by 1')
    assert [r["period_status"] for r in reported] == ["closed", "closed", "open", "open"]
    # a close needs a warehouse built from the lake as it is now
    run_ingest(cfg(data, input_dir=root / "late"))
    assert cli("close", "--month", "2025-03", "--by", "ana", "--data-dir", str(data)) == 1
    assert "published warehouse is older than the lake (events" in capsys.readouterr().err


@pytest.fixture(scope="module")
def restated(base, tmp_path_factory):
    """Jan and Feb closed, then the late events arrive and the warehouse is rebuilt."""
    root, data = base
    data = copy_of(data, tmp_path_factory.mktemp("restated") / "data")
    layout = DataLayout(data)
    close_month(layout, JAN, "ana")
    close_month(layout, FEB, "ana", "February books")
    before = {
        "reported": query(data, 'select * from mrr_monthly_reported order by "month"'),
        "live": query(data, 'select * from mrr_monthly order by "month"'),
        "report": report_kpis(data, FEB)[0],
    }
    result = build(data, root / "late")
    return data, before, result


CONTRACT_COLUMNS = {  # CONTRACT section 4
    "period_closes": ["month", "action", "acted_at", "acted_by", "note", "lake_versions"],
    "mrr_monthly_reported": ["month", "mrr", "arr", "active_customers", "new_mrr", "expansion_mrr",
                             "reactivation_mrr", "contraction_mrr", "churned_mrr", "net_new_mrr", "new_customers",
                             "reactivated_customers", "churned_customers", "customer_churn_rate",
                             "gross_mrr_churn_rate", "net_mrr_churn_rate", "arpa", "quick_ratio", "ltv",
                             "restatement_adjustment_mrr"],
    "restatements": ["month", "metric", "reported_value", "restated_value", "difference", "events", "run_id",
                     "detected_at", "booked_in_month"],
}  # fmt: skip


def test_late_events_leave_reported_figures_and_write_exact_restatements(restated):
    data, before, result = restated
    for table, columns in CONTRACT_COLUMNS.items():
        present = {r["column_name"]: r["data_type"] for r in query(
            data, "select column_name, data_type from information_schema.columns where table_name = ?", [table])}
        assert set(columns) <= set(present), (table, set(columns) - set(present))
        assert not [c for c, t in present.items() if t in ("DOUBLE", "FLOAT", "REAL")], (table, present)
    reported = {r["month"]: r for r in query(data, 'select * from mrr_monthly_reported order by "month"')}
    live = {r["month"]: r for r in query(data, 'select * from mrr_monthly order by "month"')}
    old = {r["month"]: r for r in before["reported"]}
    for month in (JAN, FEB):  # closed: every column as reported at close
        assert {k: v for k, v in reported[month].items()} == old[month]
    assert reported[FEB]["mrr"] == Decimal("150") and reported[FEB]["active_customers"] == 2
    # the restated truth moved, in its own month
    assert live[FEB]["mrr"] == Decimal("180") and live[FEB]["active_customers"] == 3
    assert live[FEB]["new_mrr"] == Decimal("80") and live[JAN] == {r["month"]: r for r in before["live"]}[JAN]
    rows = query(data, "select * from restatements order by metric")
    got = {r["metric"]: (r["reported_value"], r["restated_value"], r["difference"], r["events"]) for r in rows}
    assert got == {
        "mrr": (Decimal("150"), Decimal("180"), Decimal("30"), 1),
        "active_customers": (Decimal("2"), Decimal("3"), Decimal("1"), 1),
        "new_mrr": (Decimal("50"), Decimal("80"), Decimal("30"), 1),
        "net_revenue": (Decimal("150"), Decimal("140"), Decimal("-10"), 1),
    }
    assert {(r["month"], r["run_id"], r["detected_at"], r["booked_in_month"]) for r in rows} == {
        (FEB, result.run_id, dt.date(2025, 4, 10), MAR)}
    assert {r["metric"] for r in rows if r["material"]} == set(got)  # 20 % of MRR etc.: above 1 %
    events = query(data, "select affects, event_id from restatement_events order by 1")
    assert [(e["affects"], e["event_id"]) for e in events] == [("mrr", "late-sub"), ("net_revenue", "late-refund")]
    assert result.restatements["rows"] == 4 and result.restatements["booked_in_month"] == "2025-03"
    # the lake holds them (a rebuilt warehouse keeps them)
    assert lake.read_table(DataLayout(data), "restatements").num_rows == 4


def test_the_reported_bridge_holds_with_the_adjustment_in_the_first_open_month(restated):
    data, _, result = restated
    assert not [k for k in result.nodes if k.endswith((":fail", ":error"))], result.nodes
    rows = query(data, 'select * from mrr_monthly_reported order by "month"')
    assert [r["restatement_adjustment_mrr"] for r in rows] == [0, 0, Decimal("30"), 0]
    previous = Decimal(0)
    for r in rows:  # the same identity the dbt test checks, recomputed here
        assert r["mrr"] == (previous + r["restatement_adjustment_mrr"] + r["new_mrr"] + r["reactivation_mrr"]
                            + r["expansion_mrr"] - r["contraction_mrr"] - r["churned_mrr"]), r["month"]
        previous = r["mrr"]
    assert rows[2]["mrr"] == Decimal("200")


def test_the_dbt_bridge_test_catches_a_broken_reported_view(restated, tmp_path):
    data, _, _ = restated
    sql = (REPO / "dbt_project" / "tests" / "assert_mrr_monthly_reported_bridge.sql").read_text()
    sql = "\n".join(line for line in sql.splitlines() if not line.startswith("--"))
    sql = sql.replace("{{ ref('mrr_monthly_reported') }}", "mrr_monthly_reported")
    copy = tmp_path / "revenue.duckdb"  # the same file name: the views name their catalog after it
    shutil.copyfile(DataLayout(data).warehouse, copy)
    con = duckdb.connect(str(copy))
    assert con.execute(sql).fetchall() == []
    con.execute("update periods.closed_figures set mrr = mrr + 1 where \"month\" = ?", [FEB])  # a frozen figure drifts
    assert [r[0] for r in con.execute(sql).fetchall()] == [FEB]  # March absorbs it in its adjustment


def test_a_closed_months_report_keeps_its_kpis_and_lists_restatements(restated):
    data, before, _ = restated
    kpis, html = report_kpis(data, FEB)
    assert kpis == before["report"] and kpis["mrr"] == "150.000000"
    section = html[html.index('id="restatements"'):]
    assert "Restatements since close" in html and "180.00 USD" in section and "-10.00 USD" in section
    # the first open month shows the bridge with its adjustment line
    _, march = report_kpis(data, MAR)
    assert 'data-bridge="restatement_adjustment_mrr" data-value="30.000000"' in march
    assert 'id="cash"' in march and "reconciled" in march


def test_reopen_then_close_again_freezes_the_restated_figures(restated, tmp_path):
    data, _, _ = restated
    data = copy_of(data, tmp_path / "data")
    layout = DataLayout(data)
    result = reopen_month(layout, JAN, "cfo", "late subscription for February")
    assert result.months == [JAN, FEB] and closed_months(layout) == {}
    rows = query(data, "select * from period_closes where action = 'reopen' order by \"month\"")
    assert [(r["month"], r["note"]) for r in rows] == [
        (JAN, "late subscription for February"), (FEB, "late subscription for February (reopened with 2025-01)")]
    assert query(data, "select mrr from mrr_monthly_reported where \"month\" = ?", [FEB])[0]["mrr"] == 180
    close_month(layout, JAN, "cfo")
    frozen = close_month(layout, FEB, "cfo").frozen
    assert frozen["mrr"] == Decimal("180") and frozen["net_revenue"] == Decimal("140")
    rows = query(data, 'select * from mrr_monthly_reported order by "month"')
    assert [r["period_status"] for r in rows] == ["closed", "closed", "open", "open"]
    assert [r["restatement_adjustment_mrr"] for r in rows] == [0, 0, 0, 0]
    assert len(query(data, "select * from period_closes")) == 6


def test_a_full_refresh_keeps_every_close(restated, tmp_path):
    data, _, _ = restated
    data = copy_of(data, tmp_path / "data")
    closes_before = query(data, "select * from period_closes order by acted_at, \"month\"")
    reported_before = query(data, 'select * from mrr_monthly_reported order by "month"')
    result = build(data, full_refresh=True)
    assert query(data, "select * from period_closes order by acted_at, \"month\"") == closes_before
    assert query(data, 'select * from mrr_monthly_reported order by "month"') == reported_before
    assert len(query(data, "select * from restatements")) == 4 and result.restatements["rows"] == 0


def test_maintain_keeps_the_lake_versions_a_close_saw(restated, tmp_path):
    from pipelines.maintain import run_maintain

    data, _, _ = restated
    data = copy_of(data, tmp_path / "data")
    layout = DataLayout(data)
    seen = json.loads(closed_months(layout)[FEB]["lake_versions"])
    assert seen["customer_months"] < lake.table_version(layout, "customer_months")  # overwritten by the late run
    result = run_maintain(cfg(data), retention_hours=0)
    assert result.tables["customer_months"]["versions_kept_for_closes"] == [seen["customer_months"]]
    assert lake.read_table(layout, "events", version=seen["events"]).num_rows == len(BASE)
    old = lake.read_table(layout, "customer_months", ["customer_id", "month"], version=seen["customer_months"])
    assert old.num_rows > 0
