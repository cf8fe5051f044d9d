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


@pytest.mark.parametrize("damage", ["deleted", "zero_bytes", "garbage", "killed_mid_rebuild"])
def test_a_damaged_event_index_is_rebuilt_and_nothing_is_accepted_twice(generated, ingested, tmp_path, damage):
    clean, _ = ingested
    data = copy_data(clean, tmp_path / "data")
    index = DataLayout(data).index_file
    if damage == "deleted":
        index.unlink()
    elif damage == "zero_bytes":
        index.write_bytes(b"")
    elif damage == "garbage":
        index.write_bytes(b"not a database" * 100)
    else:  # a kill -9 during a rebuild: no index, a half-written rebuild beside it
        index.unlink()
        index.with_name(index.name + ".rebuild").write_bytes(b"SQLite format 3\x00" + b"\x00" * 100)
    again = run_ingest(cfg(data, input_dir=generated / "events"), checksums=False)
    assert again.rows_written == 0  # every event is already in the lake
    assert again.lines_read == again.duplicates + again.dead_letters
    assert lake_snapshot(data) == lake_snapshot(clean)
    assert not index.with_name(index.name + ".rebuild").exists()


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
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    cmdline = (entry / "cmdline").read_bytes().split(b"\x00")
                except OSError:
                    continue
                if any(str(data).encode() in part for part in cmdline) and any(part.endswith(b"dbt") for part in cmdline):
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
