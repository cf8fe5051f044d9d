"""An incrementally built warehouse equals a --full-refresh build of the same lake, row for row;
the dead-letter ratio is judged over a window that means something."""

import datetime as dt
import json
import shutil

import duckdb
import pytest
from conftest import cfg, truth, write_lines

from pipelines.ingest import run_ingest
from pipelines.layout import DataLayout
from pipelines.metrics import run_metrics
from pipelines.quality import dead_letter_window, warehouse_gate
from pipelines.transform import REBUILT_MATERIALIZATIONS, run_transform
from pipelines.warehouse_lake import FILE_COLUMN, table_differences


def build(data, **options):
    """ingest -> metrics -> transform with the gate, as `revenue run` chains them."""
    config = cfg(data, **{k: v for k, v in options.items() if k == "input_dir"})
    if "input_dir" in options:
        run_ingest(config)
    config = cfg(data, **{k: v for k, v in options.items() if k != "input_dir"}).resolve_as_of()
    run_metrics(config)
    return run_transform(config, gate=warehouse_gate(config))


@pytest.mark.slow
def test_batches_built_incrementally_equal_a_full_refresh(generated, tmp_path):
    files = sorted((generated / "events").rglob("*.jsonl*"))
    first, second = tmp_path / "in1", tmp_path / "in2"
    for i, path in enumerate(files):  # the generator shuffles events over files: each batch has late events
        target = (first if i < len(files) // 2 else second) / path.relative_to(generated / "events")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    data = tmp_path / "data"
    as_of = dt.date.fromisoformat(truth(generated)["as_of"])

    # 1: half the files, as of six weeks before the end; 2: the rest, as of the latest event day
    one = build(data, input_dir=first, as_of=as_of - dt.timedelta(days=42))
    two = build(data, input_dir=second)
    assert one.lake_load["mode"] == "full" and two.lake_load["mode"] == "incremental"
    # a new as-of date changes what the staging views let through: dbt creates them again
    assert not two.lake_load["views_current"] and two.nodes["model:success"] == one.nodes["model:success"]
    assert two.lake_load["changed_customers"] > 0 and two.lake_load["changed_days"] > 0
    # a new as-of month: the metrics rebuilt every customer, recording none; every customer with a row
    # in the new month changed anyway, so only the other customers' rows are compared
    load = two.lake_load
    con = duckdb.connect(str(DataLayout(data).warehouse), read_only=True)
    in_new_month = con.execute("select count(distinct customer_id) from lake.customer_months where month = ?",
                               [as_of.replace(day=1)]).fetchall()[0][0]  # fmt: skip
    others = con.execute("select count(*) from lake.customer_lifetime where customer_id not in (select customer_id "
                         "from lake.customer_months where month = ?)", [as_of.replace(day=1)]).fetchall()[0][0]  # fmt: skip
    con.close()
    assert load["changed_customers"] >= in_new_month > 0
    assert load["rows_compared"]["customer_lifetime"] <= 2 * others
    for table in ("customer_months", "customer_lifetime"):
        assert load["rows_compared"][table] < load["rows_removed"][table] + load["rows_added"][table]

    incremental = tmp_path / "incremental.duckdb"
    shutil.copy(DataLayout(data).warehouse, incremental)
    full = run_transform(cfg(data, full_refresh=True).resolve_as_of())
    assert full.lake_load["mode"] == "full" and full.lake_load["reason"] == "--full-refresh"
    assert table_differences(incremental, DataLayout(data).warehouse) == {}


@pytest.mark.slow
def test_a_micro_batch_with_one_bad_line_publishes_and_recomputes_one_customer(published, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(published / "lake", data / "lake")
    shutil.copytree(published / "warehouse", data / "warehouse")
    # a micro-batch of ten lines, one of them bad: a new profile for a known customer, and usage
    con = duckdb.connect(str(DataLayout(data).warehouse), read_only=True)
    customer, day = con.execute("select customer_id, max(cast(occurred_at as date)) from lake.events "
                                "group by 1 order by 2 desc, 1 limit 1").fetchall()[0]  # fmt: skip
    rows_before = con.execute("select count(*) from fct_usage_monthly").fetchall()[0][0]
    con.close()
    at = f"{day.isoformat()}T12:00:00Z"
    lines = [json.dumps({"event_id": "micro-profile", "event_type": "customer.created", "occurred_at": at,
                         "customer_id": customer, "country": "NZ", "segment": "micro"})]  # fmt: skip
    lines += [json.dumps({"event_id": f"micro-usage-{i}", "event_type": "usage.recorded", "occurred_at": at,
                          "customer_id": customer, "meter": "micro_meter", "quantity": i + 1}) for i in range(8)]  # fmt: skip
    lines.append("{not json")
    write_lines(tmp_path / "in" / "micro.jsonl", lines)
    result = build(data, input_dir=tmp_path / "in")  # 1 bad line in 10 (10 %) does not block publishing
    assert result.lake_load["mode"] == "incremental" and result.lake_load["rows_added"]["usage"] == 8
    assert result.lake_load["changed_customers"] == 1 and result.lake_load["changed_days"] == 0
    # same as-of date and project: the copy's views are current, so dbt builds only the tables and
    # incremental marts, and still runs every data test, those of the views included
    assert result.lake_load["views_current"]
    manifest = json.loads((DataLayout(data).dbt_workspace / "target" / "manifest.json").read_text())
    models = [n for n in manifest["nodes"].values() if n["resource_type"] == "model"]
    rebuilt = [n for n in models if n["config"]["materialized"] != "view"]
    assert {n["config"]["materialized"] for n in rebuilt} <= set(REBUILT_MATERIALIZATIONS)
    # (the seeds' tests ran when the published build loaded the same seeds)
    data_tests = [n for n in manifest["nodes"].values() if n["resource_type"] == "test"
                  and not any(d.startswith("seed.") for d in n["depends_on"]["nodes"])]  # fmt: skip
    assert any(n["depends_on"]["nodes"] == ["model.revenue.stg_customer_months"] for n in data_tests)
    assert result.nodes["model:success"] == len(rebuilt) and len(result.nodes) == 2 + ("test:warn" in result.nodes)
    assert result.nodes["test:pass"] + result.nodes.get("test:warn", 0) == len(data_tests)
    # the metrics recomputed this one customer and recorded it in their commits: the load compares
    # its old and new rows only, not the rewritten partitions' other customers
    con = duckdb.connect(str(DataLayout(data).warehouse), read_only=True)
    months = con.execute("select count(*) from lake.customer_months where customer_id = ?", [customer]).fetchall()[0][0]
    con.close()
    load = result.lake_load
    # its new profile (the one events row compared) marked it changed: its rows of the rewritten
    # customer_months partitions and of customer_lifetime need no comparison
    assert load["rows_compared"]["events"] == 1
    assert load["rows_removed"]["customer_months"] > 2 * months and load["rows_compared"]["customer_months"] == 0
    assert load["rows_removed"]["customer_lifetime"] > 2 and load["rows_compared"]["customer_lifetime"] == 0
    # its lake rows fit in memory: the lake suites ran beside dbt, then the warehouse suites
    assert "lake_frames" in result.steps
    judged = {s["suite"]: s for s in result.gate["suites"]}
    assert judged["lake_ingest_summary"]["passed"]  # judged over the whole lake, not the ten lines
    assert judged["lake_usage"]["rows"] == 8 and judged["lake_dead_letter"]["rows"] == 1  # only the new rows
    con = duckdb.connect(str(DataLayout(data).warehouse), read_only=True)
    assert con.execute("select country, segment from dim_customers where customer_id = ?",
                       [customer]).fetchall() == [("NZ", "micro")]  # fmt: skip
    assert con.execute("select count(*) from fct_usage_monthly").fetchall()[0][0] == rows_before + 1
    assert con.execute(f"select count(distinct {FILE_COLUMN}) from lake.usage").fetchall()[0][0] > 1
    con.close()


@pytest.mark.slow
@pytest.mark.parametrize("record", ["buckets", "share rule"])
def test_a_load_compares_the_recorded_customers_by_bucket_or_after_a_share_rule_rebuild(published, tmp_path,
                                                                                       monkeypatch, record):  # fmt: skip
    """Many changed customers are recorded by bucket (the load compares the rows of every customer
    in those buckets); a full metrics rebuild because many customers changed records them too.
    Either way the warehouse equals a --full-refresh build."""
    from pipelines import lake, metrics

    if record == "buckets":
        monkeypatch.setattr(lake, "RECOMPUTED_CUSTOMERS_MAX", 1)
    else:  # any change is "many": the metrics rebuild everything
        monkeypatch.setattr(metrics, "SHARE_RULE_CUSTOMERS", 1)
        monkeypatch.setattr(metrics, "MAX_INCREMENTAL_SHARE", 0.0)
    data = tmp_path / "data"
    shutil.copytree(published / "lake", data / "lake")
    shutil.copytree(published / "warehouse", data / "warehouse")
    con = duckdb.connect(str(DataLayout(data).warehouse), read_only=True)
    day = con.execute("select max(cast(occurred_at as date)) from lake.events").fetchall()[0][0]
    everyone = [r[0] for r in con.execute("select customer_id from lake.customer_lifetime").fetchall()]
    con.close()
    touched = everyone[:3]
    at = f"{day.isoformat()}T12:00:00Z"
    write_lines(tmp_path / "in" / "many.jsonl", [
        json.dumps({"event_id": f"many-usage-{c}", "event_type": "usage.recorded", "occurred_at": at,
                    "customer_id": c, "meter": "many_meter", "quantity": 2}) for c in touched] + [
        json.dumps({"event_id": f"many-paid-{c}", "event_type": "invoice.paid", "occurred_at": at, "customer_id": c,
                    "invoice_id": f"in-many-{c}", "currency": "USD", "amount": 500, "tax": 0}) for c in touched])  # fmt: skip
    result = build(data, input_dir=tmp_path / "in")
    load = result.lake_load
    assert load["mode"] == "incremental" and load["changed_customers"] == 3
    # events: only customer profiles put customers in the change table, so only those rows are compared
    assert load["rows_added"]["events"] == 3 and load["rows_compared"]["events"] == 0
    if record == "buckets":
        buckets = {lake.customer_bucket(c) for c in touched}
        compared = [c for c in everyone if lake.customer_bucket(c) in buckets]  # collisions included
    else:
        compared = touched
        assert load["rows_removed"]["customer_lifetime"] == len(everyone)  # a full rebuild rewrote every row
    assert 0 < load["rows_compared"]["customer_months"] < load["rows_removed"]["customer_months"]
    # customer_months found the touched customers changed: customer_lifetime compares the others in scope
    assert load["rows_compared"]["customer_lifetime"] == 2 * len(set(compared) - set(touched))
    incremental = tmp_path / "incremental.duckdb"
    shutil.copy(DataLayout(data).warehouse, incremental)
    run_transform(cfg(data, full_refresh=True).resolve_as_of())
    assert table_differences(incremental, DataLayout(data).warehouse) == {}


def test_a_customer_bucket_is_the_same_in_python_and_in_duckdb_and_survives_the_record():
    from pipelines import lake

    ids = [f"cus_{i:06d}" for i in range(3000)] + ["", "ü-客户-🙂", "a'b", "x" * 300]
    con = duckdb.connect()
    sql = con.execute(f"select {lake.CUSTOMER_BUCKET_SQL} from (select unnest(?::varchar[]) as customer_id)",
                      [ids]).fetchall()  # fmt: skip
    assert [r[0] for r in sql] == [lake.customer_bucket(c) for c in ids]
    assert len({lake.customer_bucket(c) for c in ids}) > 2500  # spread over the 65,536 buckets
    small = lake.recomputed_record(ids[:10])
    assert json.loads(small[lake.RECOMPUTED_CUSTOMERS_KEY]) == ids[:10]
    many = [f"cus_{i}" for i in range(lake.RECOMPUTED_CUSTOMERS_MAX + 1)]
    big = lake.recomputed_record(many)
    assert list(big) == [lake.RECOMPUTED_BUCKETS_KEY] and len(big[lake.RECOMPUTED_BUCKETS_KEY]) < 12_000
    assert lake._record_buckets(big[lake.RECOMPUTED_BUCKETS_KEY]) == {lake.customer_bucket(c) for c in many}


@pytest.mark.parametrize("new_accepted, new_dead, accepted, dead, window, ratio", [
    (9, 1, 5_000, 40, "lake", 40 / 5_040),           # a micro-batch with one bad line: the lake decides
    (9, 1, 9, 1, "fewer than 100 lines", None),      # a first micro-batch: too few lines to judge
    (94, 6, 94, 6, "new lines", 0.06),               # 100 new lines, 6 bad: judged on their own (fails 5 %)
    (970, 30, 100_000, 40, "new lines", 0.03),       # a large run is judged on its own lines, not diluted
])  # fmt: skip
def test_the_dead_letter_ratio_is_judged_over_a_meaningful_window(new_accepted, new_dead, accepted, dead, window,
                                                                   ratio):  # fmt: skip
    judged = dead_letter_window(new_accepted, new_dead, accepted, dead, min_lines=100)
    assert judged["window"] == window
    assert judged["dead_letter_ratio"] == ratio


def test_the_gate_reads_a_table_in_batches_and_adds_up_their_failures(published, tmp_path, monkeypatch):
    import pyarrow as pa
    from conftest import commit_rows

    from pipelines import lake, quality

    data = tmp_path / "data"
    shutil.copytree(published / "lake", data / "lake")
    events = lake.read_table(DataLayout(data), "events")
    paid = events.filter(pa.compute.is_valid(events["amount"]))
    bad = pa.concat_tables([paid.slice(0, 1), paid.slice(paid.num_rows - 1, 1)])
    bad = bad.set_column(bad.schema.get_field_index("amount"), bad.schema.field("amount"),
                         pa.array([-1, -2], pa.int64()))  # fmt: skip
    bad = bad.set_column(0, bad.schema.field("event_id"), pa.array(["evt_negative_1", "evt_negative_2"]))
    commit_rows(data, "events", bad.cast(events.schema))
    monkeypatch.setattr(quality, "BATCH_ROWS", 300)  # several DataFrames for one suite
    result = quality.validate(cfg(data).resolve_as_of(), suites=("lake_events",))
    [outcome] = result.suites
    assert outcome.rows == events.num_rows + 2 > 2 * 300
    [negative] = [f for f in outcome.critical_failures if f["column"] == "amount"]
    assert negative["unexpected_count"] == 2


@pytest.mark.slow
def test_an_incremental_build_checks_the_grain_of_the_customers_it_recomputed(published, tmp_path, caplog):
    """dbt's grain tests on customer tables read only the recomputed customers in an incremental build
    (the other rows passed them in the published build): a duplicate customer-month among the rows
    that changed still fails the build, and nothing is published."""
    import pyarrow as pa
    from conftest import commit_rows

    from pipelines import lake
    from transforms.errors import BuildFailed

    data = tmp_path / "data"
    shutil.copytree(published / "lake", data / "lake")
    shutil.copytree(published / "warehouse", data / "warehouse", ignore=shutil.ignore_patterns(".dbt", ".lock"))
    before = (data / "warehouse" / "revenue.duckdb").read_bytes()
    months = lake.read_table(DataLayout(data), "customer_months")
    row = months.filter(pa.compute.equal(months["customer_id"], months["customer_id"][0])).slice(0, 1)
    commit_rows(data, "customer_months", row)  # the same customer-month twice
    caplog.set_level("INFO", logger="pipelines.warehouse_lake")
    with pytest.raises(BuildFailed) as failed:
        run_transform(cfg(data).resolve_as_of())
    assert "incremental load" in caplog.text and "1 changed customers" in caplog.text
    assert "test.revenue.unique_combination_stg_customer_months_" in str(failed.value)
    assert (data / "warehouse" / "revenue.duckdb").read_bytes() == before


def test_the_gate_reads_the_lake_rows_beside_dbt_only_when_each_suite_fits_in_one_batch(published, monkeypatch):
    """``lake_frames_in_memory``: a build's lake rows to validate, in memory before dbt takes the build
    file, or None (then validated in batches after dbt) when a suite's rows exceed one batch."""
    from pipelines import quality

    layout = DataLayout(published)
    frames, missing = quality.lake_frames_in_memory(layout, layout.warehouse, min_lines=100)
    assert set(frames) == set(quality.LAKE_SUITES) and missing == {}
    events = duckdb.connect(str(layout.warehouse), read_only=True)
    new_events = events.execute("select count(*) from lake.events where _file in "
                                "(select file from lake._files where table_name = 'events' and new_in_build)").fetchall()[0][0]
    events.close()
    assert len(frames["lake_events"].frame) == new_events > 0
    monkeypatch.setattr(quality, "BATCH_ROWS", new_events - 1)
    assert quality.lake_frames_in_memory(layout, layout.warehouse, min_lines=100) is None


def test_a_build_redoes_the_set_up_made_ahead_for_other_settings(published, tmp_path):
    """`prepare_ahead` (what `revenue run`'s transform process does while the metrics run: test_run
    checks that a run's build uses it) takes the build lock, copies the dbt project and has the
    waiting dbt parse it. A build whose command, environment or FX table differ (here another as-of
    date) copies and parses again, and builds the same warehouse. With the lock held by another
    build, it prepares nothing and the build reports the lock."""
    from pipelines import transform
    from pipelines.transform import _lock_builds, prepare_ahead
    from transforms.errors import LakeError

    data = tmp_path / "data"
    shutil.copytree(published, data)
    layout = DataLayout(data)
    config = cfg(data).resolve_as_of()
    try:
        transform.prewarm_dbt()
        prepare_ahead(cfg(data, as_of=config.as_of - dt.timedelta(days=40)).resolve_as_of())
        assert transform._ahead is not None and transform._ahead.cmd is not None
        result = run_transform(config)
        assert result.prepared_ahead is False and transform._ahead is None
        assert result.lake_load["mode"] == "incremental"
        assert table_differences(published / "warehouse" / "revenue.duckdb", layout.warehouse) == {}
        transform.prewarm_dbt()
        other = _lock_builds(layout)  # another build holds the lock
        try:
            prepare_ahead(config)
            assert transform._ahead is None
            with pytest.raises(LakeError, match="another build is running"):
                run_transform(config)
        finally:
            other.close()
    finally:
        if transform._warm_dbt is not None:
            transform._warm_dbt.kill()
        transform._warm_dbt = None
