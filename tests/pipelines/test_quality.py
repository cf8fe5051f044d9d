"""The data-quality gate: corrupted lakes fail it (exit 2) and the published warehouse stays put."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import pyarrow as pa
import pytest
from conftest import REPO, cfg, commit_rows, write_lines

from pipelines import lake
from pipelines.ingest import run_ingest
from pipelines.layout import DataLayout
from pipelines.metrics import run_metrics
from pipelines.quality import validate


def cli(*args):
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, cwd=REPO)


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def corrupt_negative_amount(data):
    t = lake.read_table(DataLayout(data), "events")
    i = [j for j, v in enumerate(t["amount"].to_pylist()) if v is not None]
    row = t.slice(i[0] if i else 0, 1)
    row = row.set_column(row.schema.get_field_index("amount"), row.schema.field("amount"), pa.array([-500], pa.int64()))
    row = row.set_column(0, row.schema.field("event_id"), pa.array(["evt_corrupt_negative"]))
    commit_rows(data, "events", row.cast(t.schema))
    return "expect_column_values_to_be_between(amount)"


def corrupt_duplicate_event_id(data):
    usage = lake.read_table(DataLayout(data), "usage")
    commit_rows(data, "usage", usage.slice(0, 5))
    return "expect_column_values_to_be_unique(event_id)"


def corrupt_missing_month(data):
    layout = DataLayout(data)
    months = lake.partition_values(layout, "customer_months")
    from deltalake import CommitProperties

    run_id = lake.last_run_id(layout, "customer_months")  # damage inside the metrics run's own output
    lake.open_table(layout, "customer_months").delete(f"month = '{months[len(months) // 2].isoformat()}'",
                                                      commit_properties=CommitProperties(custom_metadata={"run_id": run_id}))
    return "expect_column_values_to_be_between(months_since_previous_row)"


@pytest.mark.parametrize("corrupt", [corrupt_negative_amount, corrupt_duplicate_event_id, corrupt_missing_month])
@pytest.mark.slow
def test_corrupted_lake_fails_the_gate_and_keeps_the_warehouse(published, tmp_path, corrupt):
    data = tmp_path / "data"
    shutil.copytree(published / "lake", data / "lake")
    shutil.copytree(published / "warehouse", data / "warehouse")
    digest = sha(DataLayout(data).warehouse)
    expectation = corrupt(data)
    # `revenue validate` in this process (its exit status for a failing gate: test_warning_level_...)
    result = validate(cfg(data).resolve_as_of())
    assert not result.passed
    failing = [f"{f['expectation']}({f['column'] or ''})" for o in result.suites for f in o.critical_failures]
    assert expectation in failing, failing
    proc = cli("transform", "--data-dir", str(data))
    # the gate (exit 2) or, when the damage also breaks model logic (a missing month breaks the MRR
    # bridge), the dbt build (exit 1) stops the publish; either way the failing check is named
    assert proc.returncode in (1, 2), proc.stdout + proc.stderr
    assert ("gate failed" in proc.stderr) if proc.returncode == 2 else ("assert_mrr_bridge_identity" in proc.stderr)
    assert sha(DataLayout(data).warehouse) == digest
    results = json.loads((data / "quality" / "latest.json").read_text())
    assert results["passed"] is False


@pytest.mark.slow
def test_warning_level_failure_passes_and_is_reported(tmp_path):
    lines = []
    for i in range(97):
        lines.append(json.dumps({"event_id": f"u{i}", "event_type": "usage.recorded", "occurred_at": "2024-05-02T00:00:00Z",
                                 "customer_id": f"c{i % 5}", "meter": "api_calls", "quantity": 10}))
    lines += ["{oops", "{still bad", "[]"]  # 3 % dead letters: above the 1 % warning, below the 5 % critical limit
    write_lines(tmp_path / "in" / "a.jsonl", lines)
    run_ingest(cfg(tmp_path / "d", input_dir=tmp_path / "in"))
    run_metrics(cfg(tmp_path / "d"))
    result = validate(cfg(tmp_path / "d").resolve_as_of())
    assert result.passed
    summary = {o.suite: o for o in result.suites}["lake_ingest_summary"]
    assert [w["expectation"] for w in summary.warnings] == ["expect_column_values_to_be_between"]
    assert summary.critical_failures == []
    proc = cli("validate", "--data-dir", str(tmp_path / "d"))
    assert proc.returncode == 0
    assert "WARNING: lake_ingest_summary: expect_column_values_to_be_between(dead_letter_ratio)" in proc.stdout
    stricter = cli("validate", "--data-dir", str(tmp_path / "d"), "--dead-letter-critical", "0.02")
    assert stricter.returncode == 2
    assert (tmp_path / "d" / "quality" / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html").exists()


def test_data_docs_keep_the_last_runs_and_every_run_keeps_its_results_file(tmp_path, monkeypatch):
    """GX renders every stored result again at each docs build: a gate that kept them all got slower
    with every run. Docs keep each suite's newest DOCS_KEEP_RUNS runs; results-<run_id>.json stay."""
    from pipelines import quality

    lines = [json.dumps({"event_id": f"u{i}", "event_type": "usage.recorded", "occurred_at": "2024-05-02T00:00:00Z",
                         "customer_id": f"c{i % 5}", "meter": "api_calls", "quantity": 10}) for i in range(20)]
    write_lines(tmp_path / "in" / "a.jsonl", lines)
    config = cfg(tmp_path / "d", input_dir=tmp_path / "in")
    run_ingest(config)
    run_metrics(cfg(tmp_path / "d"))
    monkeypatch.setattr(quality, "DOCS_KEEP_RUNS", 2)
    gx_dir = tmp_path / "d" / "quality" / "gx" / "uncommitted"
    runs = [f"run-{i}" for i in range(4)]
    for run_id in runs:
        assert validate(cfg(tmp_path / "d").resolve_as_of(), run_id=run_id).passed
    for suite in ("lake_events", "lake_usage", "lake_ingest_summary"):
        assert sorted(p.name for p in (gx_dir / "validations" / suite).iterdir()) == runs[2:]
        assert sorted(p.name for p in (gx_dir / "data_docs" / "local_site" / "validations" / suite).iterdir()) == runs[2:]
    index = (gx_dir / "data_docs" / "local_site" / "index.html").read_text()
    assert "run-3" in index and "run-0" not in index
    assert all((tmp_path / "d" / "quality" / f"results-{run_id}.json").exists() for run_id in runs)


def test_data_docs_built_run_by_run_equal_a_full_build(tmp_path, monkeypatch):
    """Each gate renders only its own pages and the index (GX's incremental build): the site is the
    one a full build of the same stores gives, page for page; a site that lacks a page is rebuilt whole."""
    import great_expectations as gx

    from pipelines import quality

    lines = [json.dumps({"event_id": f"u{i}", "event_type": "usage.recorded", "occurred_at": "2024-05-02T00:00:00Z",
                         "customer_id": f"c{i % 5}", "meter": "api_calls", "quantity": 10}) for i in range(20)]
    write_lines(tmp_path / "in" / "a.jsonl", lines)
    run_ingest(cfg(tmp_path / "d", input_dir=tmp_path / "in"))
    run_metrics(cfg(tmp_path / "d"))
    monkeypatch.setattr(quality, "DOCS_KEEP_RUNS", 2)
    quality_dir = tmp_path / "d" / "quality"
    site = quality_dir / "gx" / "uncommitted" / "data_docs" / "local_site"
    full = []
    monkeypatch.setattr(gx.data_context.AbstractDataContext, "build_data_docs",
                        lambda self, *a, _real=gx.data_context.AbstractDataContext.build_data_docs, **k:
                        (full.append(not k.get("resource_identifiers")), _real(self, *a, **k))[1])  # fmt: skip
    for run_id in ("run-0", "run-1", "run-2"):
        assert validate(cfg(tmp_path / "d").resolve_as_of(), run_id=run_id).passed
    assert full == [True, False, False]

    def pages():  # GX stamps each page with its render time and random element ids: those aside
        stamps = re.compile(rb"d=\d{8}T\d{6}\.\d+Z|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
        return {p.relative_to(site).as_posix(): stamps.sub(b"", p.read_bytes()) for p in site.rglob("*.html")}

    built = pages()
    assert any("run-2" in name for name in built) and not any("run-0" in name for name in built)
    shutil.rmtree(site)
    gx.get_context(mode="file", project_root_dir=str(quality_dir)).build_data_docs()
    assert pages() == built
    (site / quality.DOCS_VERSION_FILE).write_text("0.0")  # another GX version rendered the site: all again
    next(site.joinpath("validations").rglob("*.html")).unlink()
    assert validate(cfg(tmp_path / "d").resolve_as_of(), run_id="run-3").passed
    assert full[-1] is True


def test_results_an_earlier_release_stored_without_a_run_name_are_kept_by_time(tmp_path):
    from pipelines.quality import prune_docs_history

    store = tmp_path / "gx" / "uncommitted" / "validations" / "lake_events"
    pages = tmp_path / "gx" / "uncommitted" / "data_docs" / "local_site" / "validations" / "lake_events"
    stamps = [f"2024010{day}T000000.000000Z" for day in range(1, 5)]
    for day, stamp in enumerate(stamps, start=1):
        for root in (store / "__none__", pages / "__none__"):
            (root / stamp).mkdir(parents=True)
            (root / stamp / "result").write_text("{}")
            os.utime(root / stamp, ns=(day * 10**9,) * 2)
    assert prune_docs_history(tmp_path, keep=2) == 2
    assert sorted(p.name for p in (store / "__none__").iterdir()) == stamps[2:]
    assert sorted(p.name for p in (pages / "__none__").iterdir()) == stamps[2:]


def test_events_after_the_as_of_date_are_a_reported_warning(ingested, tmp_path):
    import datetime as dt

    data_dir, _ = ingested
    data = tmp_path / "data"
    shutil.copytree(data_dir / "lake", data / "lake")
    config = cfg(data, as_of=dt.date(2024, 12, 31))
    run_metrics(config)
    result = validate(config)
    assert result.passed
    warned = {(o.suite, w["column"]) for o in result.suites for w in o.warnings}
    assert ("lake_events", "occurred_at") in warned and ("lake_usage", "occurred_at") in warned


def test_frame_batches_gather_duckdb_chunks_up_to_the_batch_size(monkeypatch):
    """DuckDB returns small record batches; the gate validates batches of BATCH_ROWS, so a table that
    fits in one batch is validated as a whole (a duplicate id is seen whatever the scan order)."""
    import duckdb

    from pipelines import quality

    monkeypatch.setattr(quality, "BATCH_ROWS", 5_000)
    con = duckdb.connect()
    con.execute("create table t as select i, i % 11_999 as id from range(12_000) r(i)")  # ids 0 and 11999 collide
    sizes = [len(f) for f in quality.Frame(con, "select * from t").batches()]
    assert sum(sizes) == 12_000 and all(s >= 5_000 for s in sizes[:-1]) and len(sizes) == 3
    monkeypatch.setattr(quality, "BATCH_ROWS", 100_000)
    (whole,) = list(quality.Frame(con, "select * from t").batches())
    assert whole["id"].duplicated().sum() == 1
    (empty,) = list(quality.Frame(con, "select * from t where false").batches())
    assert len(empty) == 0 and list(empty.columns) == ["i", "id"]



def test_gx_imports_without_scipy_stats_until_something_uses_it():
    """The gate imports Great Expectations with scipy.stats deferred (``import_gx``); a GX expectation
    that needs it (KL divergence) still gets the real module on first use."""
    code = (
        "import sys\n"
        "from pipelines.quality import import_gx\n"
        "gx = import_gx()\n"
        "assert 'scipy.stats._stats_py' not in sys.modules\n"
        "from great_expectations.expectations.core import expect_column_kl_divergence_to_be_less_than as kl\n"
        "print(round(float(kl.stats.entropy([0.5, 0.5], [0.25, 0.75])), 6))\n"
        "assert 'scipy.stats._stats_py' in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "0.143841"  # 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75)
