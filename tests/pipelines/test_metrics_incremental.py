"""Incremental metrics runs equal full rebuilds, and cost what they change.

Events are split into batches that are ingested one after the other, each followed by a
metrics run; the reference ingests the same lines in one go, in batch order (so a conflicting
duplicate resolves the same way: the lake's earlier version wins, as the first line in input
order does), then rebuilds. Every derived table must be identical.
"""

import datetime as dt
import json
import re
import shutil
from pathlib import Path

import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from pipelines import lake
from pipelines.ingest import run_ingest
from pipelines.layout import DataLayout
from pipelines.metrics import run_metrics
from tests.conftest import cfg
from transforms import schemas

CUSTOMER = re.compile(r'"customer_id"\s*:\s*"([^"]+)"')
OCCURRED = re.compile(r'"occurred_at"\s*:\s*"(\d{4}-\d{2}-\d{2})')


@pytest.fixture(scope="module")
def lines(tmp_path_factory) -> list[str]:
    """Generated lines: late and backdated events, duplicates, conflicts, cancellations at period end,
    several currencies, bad lines (the generator's mix)."""
    from pipelines.generate import generate

    out = tmp_path_factory.mktemp("incremental-input")
    generate(out, customers=40, months=5, seed=5, bad_rate=0.05, start="2025-02", n_files=1)
    text = next((out / "events").rglob("*.jsonl")).read_text()
    return text.splitlines(keepends=True)


def derived(data_dir: Path) -> dict[str, list]:
    layout = DataLayout(data_dir)
    out = {}
    for table in schemas.DERIVED_TABLES:
        rows = lake.read_table(layout, table)
        keys = ["date", "currency"] if table == "revenue_daily" else ["customer_id"] + (
            ["month"] if table == "customer_months" else [])
        out[table] = rows.sort_by([(k, "ascending") for k in keys]).to_pylist()
    for table in ("events", "usage"):
        rows = lake.read_table(DataLayout(data_dir), table).drop_columns(["source_file", "source_line"])
        out[table] = rows.sort_by([("event_id", "ascending")]).to_pylist()
    # by reason: a redacted line's hash is keyed with each data dir's own secret
    out["dead_letter"] = lake.counts_by(lake.read_table(layout, "dead_letter", ["reason"]), "reason")
    return out


def run_batches(root: Path, batches: list[list[str]], after=None) -> list:
    """Each non-empty batch ingested then run through metrics into ``root/seq``; ``after(data_dir)``,
    when given, runs after each batch's metrics (e.g. a warehouse build)."""
    data = root / "seq"
    results = []
    for i, batch in enumerate(batches):
        folder = root / f"batch-{i}"
        folder.mkdir()
        (folder / "events.jsonl").write_text("".join(batch))
        if not batch:
            continue
        run_ingest(cfg(data, input_dir=folder), write_run_manifest=False)
        results.append(run_metrics(cfg(data), write_run_manifest=False))
        if after is not None:
            after(data)
    return results


def run_once(root: Path, batches: list[list[str]]) -> Path:
    data, folder = root / "one", root / "one-input"
    folder.mkdir()
    (folder / "events.jsonl").write_text("".join(line for batch in batches for line in batch))
    run_ingest(cfg(data, input_dir=folder), write_run_manifest=False)
    run_metrics(cfg(data, full_refresh=True), write_run_manifest=False)
    return data


@pytest.mark.slow
@settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**16), batches=st.integers(2, 3), share=st.sampled_from([0.05, 0.15, 1.0]),
       recent_last=st.booleans())  # fmt: skip
def test_incremental_runs_equal_one_full_run(lines, tmp_path_factory, seed, batches, share, recent_last):
    import random

    rng = random.Random(seed)
    customers = sorted({m.group(1) for line in lines if (m := CUSTOMER.search(line))})
    moving = set(rng.sample(customers, max(1, int(share * len(customers)))))
    days = sorted({m.group(1) for line in lines if (m := OCCURRED.search(line))})
    recent = set(days[-6:]) if recent_last else set()
    split: list[list[str]] = [[] for _ in range(batches)]
    for line in lines:
        who, day = CUSTOMER.search(line), OCCURRED.search(line)
        if day and day.group(1) in recent:
            split[-1].append(line)  # the as-of date moves forward inside its month
        elif who and who.group(1) in moving:
            split[rng.randrange(batches)].append(line)  # late events for old months, any customer
        else:
            split[0].append(line)
    root = tmp_path_factory.mktemp("incremental")
    results = run_batches(root, split)
    assert results[0].mode == "full"
    reference = derived(run_once(root, split))
    assert derived(root / "seq") == reference
    if share < 1.0 and len(results) > 1:
        assert any(r.mode == "incremental" for r in results[1:]), [(r.mode, r.reason) for r in results]


def test_new_events_for_one_customer_read_only_that_customer(lines, tmp_path):
    """The history of customers with no new event is not read (the rows read are counted)."""
    customers = sorted({m.group(1) for line in lines if (m := CUSTOMER.search(line))})
    target = customers[3]
    first = [line for line in lines if not (m := CUSTOMER.search(line)) or m.group(1) != target]
    rest = [line for line in lines if (m := CUSTOMER.search(line)) and m.group(1) == target]
    late, head = rest[len(rest) // 2:], rest[: len(rest) // 2]
    root = tmp_path
    results = run_batches(root, [first + head, late])
    second = results[-1]
    assert second.mode == "incremental", second.reason
    assert second.customers_recomputed == 1
    layout = DataLayout(root / "seq")
    theirs = sum(lake.read_table(layout, t, ["customer_id"], filter=pc.field("customer_id") == target).num_rows
                 for t in ("events", "usage"))  # fmt: skip
    assert second.rows_read == theirs
    everyone = sum(lake.read_table(layout, t, ["customer_id"]).num_rows for t in ("events", "usage"))
    assert second.rows_read < everyone / 10


def test_an_incremental_run_reads_months_in_bounded_slices(lines, tmp_path, monkeypatch):
    """An incremental run cuts each month into slices of whole days as a full rebuild does: the days
    whose revenue_daily it recomputes count whole, the others by the changed customers' share. So
    its memory follows the slice size, not the month's (a live stream's months grow all day); the
    tables equal a full rebuild's."""
    from collections import Counter

    from pipelines import metrics

    monkeypatch.setattr(metrics, "SLICE_ROWS", 60)
    planned = []
    real = metrics._month_elements

    def recording(layout, pinned, as_of, plan):
        elements = real(layout, pinned, as_of, plan)
        planned.append((plan.mode, elements))
        return elements

    monkeypatch.setattr(metrics, "_month_elements", recording)
    customers = sorted({m.group(1) for line in lines if (m := CUSTOMER.search(line))})
    moving = set(customers[:8])  # 8 of 40: incremental (at most a quarter)
    first = [line for line in lines if not (m := CUSTOMER.search(line)) or m.group(1) not in moving]
    late = [line for line in lines if (m := CUSTOMER.search(line)) and m.group(1) in moving]
    results = run_batches(tmp_path, [first, late])
    assert results[-1].mode == "incremental", results[-1].reason
    mode, elements = planned[1]
    assert mode == "incremental"
    slices = Counter(month for month, *_ in elements)
    assert max(slices.values()) > 1, slices  # one element per month before
    assert derived(tmp_path / "seq") == derived(run_once(tmp_path, [first, late]))


def test_a_full_rebuild_in_worker_processes_equals_one_process(lines, tmp_path, monkeypatch):
    """``--metrics-workers 2`` runs the shards in two Beam worker processes: the same tables as one
    process, and no worker output left behind on success."""
    from pipelines import metrics

    monkeypatch.setattr(metrics, "SHARD_ROWS", 150)  # a lake of several shards
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "events.jsonl").write_text("".join(lines))
    one, two = tmp_path / "one", tmp_path / "two"
    for data in (one, two):
        run_ingest(cfg(data, input_dir=folder), write_run_manifest=False)
    single = run_metrics(cfg(one, full_refresh=True), write_run_manifest=False)
    double = run_metrics(cfg(two, full_refresh=True, metrics_workers=2), write_run_manifest=False)
    assert (single.workers, double.workers) == (1, 2)
    assert single.shards == double.shards > 2
    assert single.rows_read == double.rows_read > 0  # the counters add up over the workers
    assert derived(two) == derived(one)
    assert not list((two / "runs").glob("*-metrics-workers.log"))


def test_nothing_new_commits_nothing(lines, tmp_path):
    results = run_batches(tmp_path, [lines])
    layout = DataLayout(tmp_path / "seq")
    before = lake.versions(layout, schemas.DERIVED_TABLES)
    again = run_metrics(cfg(tmp_path / "seq"), write_run_manifest=False)
    assert again.mode == "unchanged"
    assert lake.versions(layout, schemas.DERIVED_TABLES) == before
    assert again.mrr_at_as_of == results[0].mrr_at_as_of


def _event(event_id: str, event_type: str, occurred: str, customer: str, **fields) -> str:
    return json.dumps({"event_id": event_id, "event_type": event_type, "occurred_at": occurred,
                       "customer_id": customer, **fields}) + "\n"  # fmt: skip


def test_scheduled_cancellation_between_two_as_of_dates_is_recomputed(tmp_path):
    """A cancellation at period end recorded earlier takes effect between two runs' as-of dates,
    with no new event for that customer: the incremental run still applies it."""
    sub = {"subscription_id": "s-1", "plan_id": "pro", "currency": "USD", "unit_amount": 5000, "quantity": 1,
           "interval": "month", "interval_count": 1}  # fmt: skip
    first = [
        _event("e1", "subscription.created", "2025-03-01T00:00:00Z", "c-cancel", **sub),
        _event("e2", "subscription.canceled", "2025-03-05T00:00:00Z", "c-cancel", subscription_id="s-1",
               effective_at="2025-03-20T00:00:00Z"),
        _event("e3", "subscription.created", "2025-03-02T00:00:00Z", "c-other", **{**sub, "subscription_id": "s-2"}),
        _event("e4", "invoice.paid", "2025-03-10T00:00:00Z", "c-other", subscription_id="s-2", invoice_id="i-1",
               currency="USD", amount=5000, tax=0),
    ]
    later = [_event("e5", "invoice.paid", "2025-03-25T00:00:00Z", "c-other", subscription_id="s-2",
                    invoice_id="i-2", currency="USD", amount=5000, tax=0)]  # fmt: skip
    results = run_batches(tmp_path, [first, later])
    assert results[0].as_of == dt.date(2025, 3, 10) and results[1].as_of == dt.date(2025, 3, 25)
    assert results[1].mode == "incremental"
    assert results[1].customers_recomputed == 2  # c-other (new event) and c-cancel (its cancellation)
    months = lake.read_table(DataLayout(tmp_path / "seq"), "customer_months")
    mrr = {r["customer_id"]: r["mrr"] for r in months.to_pylist()}
    assert mrr["c-cancel"] == 0 and mrr["c-other"] > 0
    assert derived(tmp_path / "seq") == derived(run_once(tmp_path, [first, later]))


def test_interrupted_run_is_repaired_by_a_full_rebuild(lines, tmp_path, monkeypatch):
    """A kill between two derived tables' commits leaves them from different runs; the next run
    sees it in the commits' metadata and rebuilds everything."""
    customers = sorted({m.group(1) for line in lines if (m := CUSTOMER.search(line))})
    late = [line for line in lines if (m := CUSTOMER.search(line)) and m.group(1) == customers[0]]
    first = [line for line in lines if line not in set(late)]
    run_batches(tmp_path, [first])
    folder = tmp_path / "late"
    folder.mkdir()
    (folder / "events.jsonl").write_text("".join(late))
    run_ingest(cfg(tmp_path / "seq", input_dir=folder), write_run_manifest=False)
    real_commit = lake.commit

    def dies_after_customer_months(layout, table, *args, **kwargs):
        if table == "customer_lifetime":
            raise KeyboardInterrupt("killed between two commits")
        return real_commit(layout, table, *args, **kwargs)

    monkeypatch.setattr(lake, "commit", dies_after_customer_months)
    with pytest.raises(KeyboardInterrupt):
        run_metrics(cfg(tmp_path / "seq"), write_run_manifest=False)
    monkeypatch.setattr(lake, "commit", real_commit)
    again = run_metrics(cfg(tmp_path / "seq"), write_run_manifest=False)
    assert again.mode == "full" and "different runs" in again.reason
    shutil.rmtree(tmp_path / "one", ignore_errors=True)
    assert derived(tmp_path / "seq") == derived(run_once(tmp_path, [first, late]))


def test_full_refresh_flag_rebuilds(lines, tmp_path):
    run_batches(tmp_path, [lines])
    before = derived(tmp_path / "seq")
    again = run_metrics(cfg(tmp_path / "seq", full_refresh=True), write_run_manifest=False)
    assert again.mode == "full" and again.reason == "--full-refresh"
    assert derived(tmp_path / "seq") == before


def _warehouse_without_provenance(data_dir: Path, out: Path) -> Path:
    """A copy of the published warehouse without the columns that name a run, a file or a line
    (they differ between two data dirs built from the same events by construction; a dead letter's
    ``raw_sha256`` is the identity of a line at its position: file, line number and bytes)."""
    import duckdb

    from pipelines.warehouse_lake import FILE_COLUMN

    provenance = {"run_id", "source_file", "source_line", "raw_sha256", "ingest_run_id", "built_at", "published_at", FILE_COLUMN}
    con = duckdb.connect(str(out))
    con.execute(f"attach '{DataLayout(data_dir).warehouse}' as src (read_only)")
    for schema, table in con.execute("select table_schema, table_name from information_schema.tables "
                                     "where table_catalog = 'src' and table_type = 'BASE TABLE'").fetchall():  # fmt: skip
        columns = [c for (c,) in con.execute(
            "select column_name from information_schema.columns where table_catalog = 'src' and table_schema = ? "
            "and table_name = ? order by ordinal_position", [schema, table]).fetchall() if c not in provenance]  # fmt: skip
        con.execute(f'create schema if not exists "{schema}"')
        cols = ", ".join(f'"{c}"' for c in columns)
        con.execute(f'create table "{schema}"."{table}" as select {cols} from src."{schema}"."{table}"')
    con.close()
    return out


@pytest.mark.slow
# each example builds three warehouses (about a minute of a 2-core machine): one example per run, no
# shrinking; every run draws a new split (the metrics-level property above draws two)
@settings(max_examples=1, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
          phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(seed=st.integers(0, 2**16), share=st.sampled_from([0.1, 0.3]))
def test_incremental_warehouse_equals_one_shot_warehouse(lines, tmp_path_factory, seed, share):
    """Batches run in order (ingest, metrics, incremental dbt build) give the warehouse a one-shot
    run of the same events gives: every table, row for row (provenance columns aside)."""
    import random

    from pipelines.transform import run_transform
    from pipelines.warehouse_lake import table_differences

    rng = random.Random(seed)
    customers = sorted({m.group(1) for line in lines if (m := CUSTOMER.search(line))})
    moving = set(rng.sample(customers, max(1, int(share * len(customers)))))
    split: list[list[str]] = [[], []]
    for line in lines:  # late events for old months in the second batch, for a share of the customers
        who = CUSTOMER.search(line)
        split[1 if who and who.group(1) in moving and rng.random() < 0.5 else 0].append(line)
    root = tmp_path_factory.mktemp("incremental-warehouse")
    data = root / "seq"
    loads = []
    run_batches(root, split, after=lambda d: loads.append(run_transform(cfg(d).resolve_as_of()).lake_load))
    assert [load["mode"] for load in loads] == ["full", "incremental"], loads

    one = run_once(root, split)
    assert derived(data) == derived(one)  # the lake's tables too (the property above, on other splits)
    run_transform(cfg(one, full_refresh=True).resolve_as_of())
    a = _warehouse_without_provenance(data, root / "seq-compare.duckdb")
    b = _warehouse_without_provenance(one, root / "one-compare.duckdb")
    assert table_differences(a, b) == {}, (seed, share)


@pytest.mark.slow
def test_a_compaction_between_two_runs_is_no_change(lines, tmp_path, monkeypatch):
    """Files merged by a compaction (dataChange=false) hold the same rows: the next incremental
    metrics run reads only what was appended since the last run (not the compacted partitions),
    the next incremental warehouse build recomputes only the customer with new events, and both
    end equal to a one-shot run of the same events."""
    import pipelines.metrics as metrics
    from pipelines.transform import run_transform
    from pipelines.warehouse_lake import table_differences

    customers = sorted({m.group(1) for line in lines if (m := CUSTOMER.search(line))})
    target = customers[5]
    mine = [line for line in lines if (m := CUSTOMER.search(line)) and m.group(1) == target]
    others = [line for line in lines if not (m := CUSTOMER.search(line)) or m.group(1) != target]
    batches = [others[0::3], others[1::3], others[2::3] + mine[: len(mine) // 2], mine[len(mine) // 2:]]
    root = tmp_path
    data = root / "seq"
    for i, batch in enumerate(batches[:3]):  # three files in most day partitions, then one metrics run
        folder = root / f"batch-{i}"
        folder.mkdir()
        (folder / "events.jsonl").write_text("".join(batch))
        run_ingest(cfg(data, input_dir=folder), write_run_manifest=False)
    run_metrics(cfg(data), write_run_manifest=False)
    layout = DataLayout(data)
    assert run_transform(cfg(data).resolve_as_of()).lake_load["mode"] == "full"
    folder = root / "late"
    folder.mkdir()
    (folder / "events.jsonl").write_text("".join(batches[3]))
    late = run_ingest(cfg(data, input_dir=folder), write_run_manifest=False)
    appended = {f for t in ("events", "usage") for f in lake.run_files(layout, t, late.run_id)}
    assert appended
    merged = [lake.compact_small_files(layout, t, "test-compaction") for t in ("events", "usage")]
    assert all(m and m["files_removed"] > m["files_added"] for m in merged), merged
    assert not appended & {f for t in ("events", "usage") for fs in lake.files_by_partition(layout, t).values()
                           for f in fs}  # fmt: skip
    scanned, inside = [], []
    real_scan, real_changed_rows = metrics._scan, metrics._changed_rows

    def recording_scan(store, files, schema=None):
        if inside:
            scanned.extend(files)
        return real_scan(store, files, schema)

    def changed_rows(*args):
        inside.append(True)
        try:
            return real_changed_rows(*args)
        finally:
            inside.clear()

    monkeypatch.setattr(metrics, "_scan", recording_scan)
    monkeypatch.setattr(metrics, "_changed_rows", changed_rows)
    result = run_metrics(cfg(data), write_run_manifest=False)
    assert result.mode == "incremental", result.reason
    assert result.customers_recomputed == 1
    assert set(scanned) == appended  # the appended files (compacted away, still on disk), nothing else
    monkeypatch.undo()
    one = run_once(root, batches)
    assert derived(data) == derived(one)

    load = run_transform(cfg(data).resolve_as_of()).lake_load
    assert load["mode"] == "incremental" and load["changed_customers"] == 1, load
    run_transform(cfg(one, full_refresh=True).resolve_as_of())
    a = _warehouse_without_provenance(data, root / "seq-compare.duckdb")
    b = _warehouse_without_provenance(one, root / "one-compare.duckdb")
    assert table_differences(a, b) == {}
