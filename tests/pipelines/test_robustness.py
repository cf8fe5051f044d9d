"""Kills and damage leave nothing a rerun does not clean up; the gate never passes on what it cannot see;
everything written is owner-only."""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, cfg, lake_snapshot, wait_until

from pipelines.ingest import run_ingest
from pipelines.layout import DataLayout
from pipelines.quality import validate
from pipelines.transform import run_transform


def cli(*args, env=None):
    full = {k: v for k, v in os.environ.items() if k != "REVENUE_UMASK"}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, cwd=REPO,
                          env=full)  # fmt: skip


def copy_data(src: Path, dst: Path) -> Path:
    shutil.copytree(src / "lake", dst / "lake")
    if (src / "warehouse").exists():
        shutil.copytree(src / "warehouse", dst / "warehouse", ignore=shutil.ignore_patterns(".lock"))
    return dst


def test_files_of_an_uncommitted_run_are_invisible_and_maintain_removes_them(ingested, tmp_path):
    clean, _ = ingested
    data = copy_data(clean, tmp_path / "data")
    layout = DataLayout(data)
    partition = next(layout.table("events").glob("event_date=*"))
    stray = partition / "part-20990101T000000Z-killed.parquet"
    shutil.copyfile(next(partition.glob("part-*.parquet")), stray)  # what a run killed before its commit leaves
    assert lake_snapshot(data) == lake_snapshot(clean)
    proc = cli("maintain", "--data-dir", str(data), "--retention-hours", "0")
    assert proc.returncode == 0, proc.stderr
    assert not stray.exists()
    assert lake_snapshot(data) == lake_snapshot(clean)


def test_a_reader_only_ever_sees_whole_committed_versions(generated, ingested, tmp_path):
    import threading

    from pipelines import lake

    clean, first = ingested
    data = copy_data(clean, tmp_path / "data")
    layout = DataLayout(data)
    more = tmp_path / "more"
    shutil.copytree(generated / "events", more / "a")
    for path in (more / "a").rglob("*.jsonl*"):  # the same events under new ids: all new rows
        if path.suffix == ".jsonl":
            path.write_text(path.read_text().replace('"evt_', '"again_evt_'))
        else:
            path.unlink()
    before = lake.read_table(layout, "usage", ["event_id"]).num_rows
    seen, done = set(), threading.Event()

    def poll():
        while not done.is_set():
            seen.add(lake.read_table(layout, "usage", ["event_id"]).num_rows)

    reader = threading.Thread(target=poll)
    reader.start()
    result = run_ingest(cfg(data, input_dir=more))
    done.set()
    reader.join()
    after = lake.read_table(layout, "usage", ["event_id"]).num_rows
    assert after == before + result.usage_written > before
    assert seen <= {before, after}
    # and the previous version is still there to read (time travel)
    assert lake.read_table(layout, "usage", ["event_id"], version=lake.table_version(layout, "usage") - 1).num_rows == before


def test_a_lake_written_by_the_previous_release_is_upgraded_on_first_use(tmp_path):
    fixture = REPO / "tests" / "fixtures" / "lake_v1"
    data = tmp_path / "data"
    shutil.copytree(fixture / "lake", data / "lake")
    (tmp_path / "in").mkdir()
    shutil.copyfile(fixture / "events.jsonl", tmp_path / "in" / "events.jsonl")
    proc = cli("ingest", "--input", str(tmp_path / "in"), "--data-dir", str(data), env={"REVENUE_PII_KEY": "fixture-key"})
    assert proc.returncode == 0, proc.stderr
    upgraded = [line for line in proc.stderr.splitlines() if "upgraded the lake to Delta tables" in line]
    assert len(upgraded) == 1 and "events 65 rows" in upgraded[0] and "usage 7 rows" in upgraded[0]
    assert "read 75 = written 0 + duplicates 75 + dead letters 0" in proc.stdout  # nothing new: the old lake counted
    layout = DataLayout(data)
    assert not (layout.lake / "_index").exists()
    from pipelines import lake

    assert {t: lake.read_table(layout, t).num_rows for t in ("events", "usage", "dead_letter")} == {
        "events": 65, "usage": 7, "dead_letter": 3}
    rerun = cli("run", "--input", str(tmp_path / "in"), "--data-dir", str(data), "--quiet", env={"REVENUE_PII_KEY": "fixture-key"})
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr


def test_validate_fails_when_a_derived_table_is_missing(published, tmp_path):
    data = copy_data(published, tmp_path / "data")
    shutil.rmtree(data / "lake" / "customer_months")  # as a kill between two renames could leave it
    result = validate(cfg(data).resolve_as_of(), warehouse=DataLayout(data).warehouse)
    assert not result.passed
    failed = {o.suite: o.critical_failures for o in result.suites if not o.passed}
    assert failed["lake_customer_months"][0]["expectation"] == "table_exists"
    proc = cli("validate", "--data-dir", str(data))
    assert proc.returncode == 2 and "table_exists" in proc.stdout


def test_a_leftover_build_folder_is_removed_by_the_next_build(published, tmp_path):
    data = copy_data(published, tmp_path / "data")
    layout = DataLayout(data)
    stale = layout.build_dir("20000101T000000Z-deadbeef")
    (stale / "project").mkdir(parents=True)
    (stale / "revenue.duckdb").write_bytes(b"half a build")
    run_transform(cfg(data))
    assert layout.stale_builds() == []
    assert layout.warehouse.exists()


@pytest.mark.slow
def test_killing_the_run_kills_its_dbt_child(published, tmp_path):
    data = copy_data(published, tmp_path / "data")
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "transform", "--data-dir", str(data), "--no-gate"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    def dbt_children() -> list[int]:
        """The transform's dbt: a child of it running dbt (its build comes on stdin)."""
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    cmdline = (entry / "cmdline").read_bytes()
                    parent = int((entry / "stat").read_text().rsplit(") ", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
                if parent == proc.pid and b"dbt.cli.main" in cmdline:
                    found.append(int(entry.name))
        return found

    children: list[int] = []
    while proc.poll() is None and not children:
        children = dbt_children()
        try:
            proc.wait(timeout=0.01)
        except subprocess.TimeoutExpired:
            pass
    assert children, "the transform ended before dbt started"
    os.kill(proc.pid, signal.SIGKILL)  # the parent only: the child must not outlive it
    proc.wait()

    def gone(pid: int) -> bool:
        try:
            return (Path(f"/proc/{pid}") / "stat").read_text().split(") ")[1][0] in "ZX"
        except OSError:
            return True

    assert wait_until(lambda: all(gone(pid) for pid in children), timeout=10)
    # the next build cleans up what the killed one left
    run_transform(cfg(data))
    assert DataLayout(data).stale_builds() == []


@pytest.mark.slow
def test_everything_written_is_owner_only(tmp_path):
    data = tmp_path / "data"
    events = tmp_path / "in" / "a.jsonl"
    events.parent.mkdir()
    events.write_text(json.dumps({"event_id": "e1", "event_type": "usage.recorded", "occurred_at": "2024-05-02T00:00:00Z",
                                  "customer_id": "c1", "meter": "api_calls", "quantity": 3}) + "\n")
    proc = cli("ingest", "--input", str(events.parent), "--data-dir", str(data))
    assert proc.returncode == 0, proc.stderr
    paths = [data, *data.rglob("*")]
    assert len(paths) > 5
    loose = [str(p) for p in paths if stat.S_IMODE(p.stat().st_mode) & 0o077]
    assert loose == []
    shared = tmp_path / "shared"
    proc = cli("ingest", "--input", str(events.parent), "--data-dir", str(shared), env={"REVENUE_UMASK": "022"})
    assert proc.returncode == 0
    assert stat.S_IMODE((shared / "lake").stat().st_mode) == 0o755
    bad = cli("ingest", "--input", str(events.parent), "--data-dir", str(shared), env={"REVENUE_UMASK": "rw"})
    assert bad.returncode == 1 and "REVENUE_UMASK" in bad.stderr


def test_duckdb_out_of_memory_is_one_line_and_leaves_the_warehouse(published, tmp_path):
    """A lake larger than DuckDB's memory limit allows: `revenue transform` exits 1 with one line naming the
    setting to raise, not a traceback, and the published warehouse stays byte for byte as it was."""
    import hashlib

    import duckdb

    data = copy_data(published, tmp_path / "data")
    warehouse = DataLayout(data).warehouse
    con = duckdb.connect(str(warehouse))  # as if the dbt project had changed: the build loads the whole lake
    con.execute("update lake._load_state set state = json_merge_patch(state, '{\"fingerprint\": \"older\"}')")
    con.close()
    before = hashlib.sha256(warehouse.read_bytes()).hexdigest()
    proc = cli("transform", "--data-dir", str(data), env={"REVENUE_DUCKDB_MEMORY_LIMIT": "1MB"})
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "REVENUE_DUCKDB_MEMORY_LIMIT" in lines[0] and "Traceback" not in proc.stderr, lines
    assert hashlib.sha256(warehouse.read_bytes()).hexdigest() == before


def test_a_metrics_run_does_not_wait_for_an_ingest_and_whole_lake_writers_wait_for_both(generated, ingested, tmp_path):
    """The live mode's micro-batches hold the ingest tables' lock while the publish's metrics hold the
    derived tables': neither waits for the other, each still admits one writer, and maintain or a month
    close (every table) is refused while either is held."""
    from pipelines import lake
    from pipelines.metrics import run_metrics
    from transforms.errors import LakeError

    data = copy_data(ingested[0], tmp_path / "data")
    layout = DataLayout(data)
    with lake.lake_lock(layout, (lake.INGEST_SCOPE,)):  # a micro-batch in progress
        metrics = run_metrics(cfg(data))
        assert metrics.customers > 0
        with pytest.raises(LakeError, match=r"lock held\)"):
            run_ingest(cfg(data, input_dir=generated / "events"))
        with pytest.raises(LakeError, match="lock held"), lake.lake_lock(layout):
            pass
    with lake.lake_lock(layout, (lake.DERIVED_SCOPE,)):  # a publish's metrics in progress
        again = run_ingest(cfg(data, input_dir=generated / "events"))
        assert again.rows_written == 0 and again.duplicates > 0
        with pytest.raises(LakeError, match="lock held on the derived tables"):
            run_metrics(cfg(data))
        with pytest.raises(LakeError, match="lock held on the derived tables"), lake.lake_lock(layout):
            pass
    with lake.lake_lock(layout):
        pass


def test_each_writer_scope_removes_only_its_own_interrupted_scratch_files(tmp_path):
    """A stream batch starting while a publish's metrics run must not delete the metrics' scratch files
    (nor the reverse); what a killed run of a scope left goes with that scope's next writer."""
    from pipelines import lake

    layout = DataLayout(tmp_path / "data")
    ingest_left = layout.staging("20261128T000000Z-aaaaaaaa", lake.INGEST_SCOPE)
    metrics_left = layout.staging("20261128T000000Z-bbbbbbbb", lake.DERIVED_SCOPE)
    for folder in (ingest_left, metrics_left):
        (folder / "part").mkdir(parents=True)
    with lake.lake_lock(layout, (lake.INGEST_SCOPE,)):
        assert not ingest_left.exists() and metrics_left.exists()
    (ingest_left / "part").mkdir(parents=True)
    with lake.lake_lock(layout, (lake.DERIVED_SCOPE,)):
        assert ingest_left.exists() and not metrics_left.exists()
    with lake.lake_lock(layout):
        assert not any(layout.staging_root.iterdir())


def test_a_build_file_left_with_a_write_ahead_log_is_checkpointed_before_it_is_published_alone(tmp_path):
    """A writer that ends without closing its DuckDB file leaves its last changes in the WAL beside
    it; the publish moves the file alone, so those changes are checkpointed into it first."""
    import duckdb

    from pipelines.transform import _checkpointed

    build = tmp_path / "revenue.duckdb"
    script = ("import duckdb, os, sys\n"
              "con = duckdb.connect(sys.argv[1])\n"
              "con.execute('create table t as select range as i from range(1000)')\n"
              "os._exit(0)\n")  # fmt: skip
    subprocess.run([sys.executable, "-c", script, str(build)], check=True)
    assert Path(f"{build}.wal").exists()
    _checkpointed(build)
    assert not Path(f"{build}.wal").exists()
    alone = tmp_path / "published.duckdb"
    shutil.copyfile(build, alone)
    con = duckdb.connect(str(alone), read_only=True)
    assert con.execute("select count(*), sum(i) from t").fetchall() == [(1000, 499500)]
    con.close()
