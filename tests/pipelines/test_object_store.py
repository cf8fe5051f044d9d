"""The lake on an S3-compatible object store: moto's server on a loopback port, the `revenue` CLI
end to end (subprocesses, as a user runs it), nothing of the lake on the local disk."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pyarrow.compute as pc
import pytest
from conftest import REPO, cfg, truth

pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "lake-test", "AWS_SECRET_ACCESS_KEY": "lake-test-secret",
               "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}  # fmt: skip
INGEST_TABLES = ("events", "usage", "dead_letter")
DERIVED = ("customer_months", "customer_lifetime", "revenue_daily")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def endpoint():
    """moto's S3 server in its own process (in this one, deltalake calls that hold the GIL would
    starve the server's thread)."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        for _ in range(600):  # until it listens (about 1 s)
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                try:
                    server.wait(timeout=0.05)  # returns at once if it died
                    pytest.fail("moto's server exited at start")
                except subprocess.TimeoutExpired:
                    pass
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def s3_env(endpoint, monkeypatch):
    """The AWS variables of the endpoint, in this process (reads) and for the CLI subprocesses."""
    env = {
        **CREDENTIALS,
        "AWS_ENDPOINT_URL": endpoint,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_S3_ALLOW_UNSAFE_RENAME", raising=False)
    monkeypatch.delenv("REVENUE_LAKE_URI", raising=False)
    return env


@pytest.fixture
def bucket(s3_env):
    client = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"], region_name="us-east-1")
    name = f"revenue-lake-{uuid.uuid4().hex[:10]}"  # letters between digit runs (leak scan)
    client.create_bucket(Bucket=name)
    yield name
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=name, Key=item["Key"])
    client.delete_bucket(Bucket=name)


def revenue(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)  # fmt: skip
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def manifest(data: Path, command: str) -> dict:
    return json.loads(sorted((data / "runs").glob(f"*-{command}.json"))[-1].read_text())


def counts(layout) -> dict[str, int]:
    from pipelines import lake

    return {t: lake.read_table(layout, t).num_rows for t in (*INGEST_TABLES, *DERIVED)}


def sorted_rows(layout, table: str) -> list[dict]:
    from pipelines import lake

    rows = lake.read_table(layout, table).to_pylist()
    return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True, default=str))


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """Two months of generated events (duplicates, conflicts and bad lines included). Every file of
    the lake costs requests, and a day partition holds one file per table: a short span keeps the
    number of files, so the test's time, small (the bundled two-year sample took 3.5 minutes on a
    loaded 2-core machine against moto's server)."""
    from pipelines.generate import generate

    out = tmp_path_factory.mktemp("object-store-input")
    generate(out, customers=200, months=2, seed=21, bad_rate=0.02, start="2025-05", n_files=3)
    return out


def ingest_twice_at_once(uri: str, events: Path, data_dirs: list[Path]) -> list[tuple[int, str]]:
    """Two `revenue ingest` of ``events`` into one lake, started together: (exit status, stderr) each."""
    args = [sys.executable, "-m", "pipelines.cli", "ingest", "--input", str(events), "--lake", uri]
    procs = [subprocess.Popen([*args, "--data-dir", str(d)], cwd=REPO, env=os.environ.copy(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for d in data_dirs]  # fmt: skip
    results = []
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        results.append((proc.returncode, err))
    return results


@pytest.mark.slow
def test_ingest_and_metrics_on_an_object_store_equal_a_local_run(s3_env, bucket, source, tmp_path):
    from pipelines import lake
    from pipelines.ingest import run_ingest
    from pipelines.layout import DataLayout
    from pipelines.metrics import run_metrics

    uri = f"s3://{bucket}/lake"
    events = str(source / "events")
    # two runs on one lake at once: the second exits 1 with one line, or both succeed without duplicates
    dirs = [tmp_path / "first", tmp_path / "second"]
    results = ingest_twice_at_once(uri, source / "events", dirs)
    codes = sorted(code for code, _ in results)
    assert codes in ([0, 0], [0, 1]), results
    if codes == [0, 1]:
        err = next(text for code, text in results if code == 1).strip().splitlines()
        assert len(err) == 1 and "another run is writing" in err[0], err
    done = [(d, manifest(d, "ingest")) for d, (code, _) in zip(dirs, results, strict=True) if code == 0]
    runs = [run for _, run in done]
    for run in runs:  # every run's lines accounted for
        c = run["counts"]
        assert c["lines_read"] == c["rows_written"] + c["duplicates"] + c["dead_letters"]
    data, first = max(done, key=lambda pair: pair[1]["counts"]["rows_written"])
    assert sum(r["counts"]["rows_written"] for r in runs) == first["counts"]["rows_written"] > 1_000
    revenue(
        "metrics", "--data-dir", str(data), env={"REVENUE_LAKE_URI": uri}
    )  # the lake from the environment

    # the same input, run locally
    local = tmp_path / "local"
    run_ingest(cfg(local, input_dir=source / "events"))
    run_metrics(cfg(local))

    remote = DataLayout(data, uri)
    assert counts(remote) == counts(DataLayout(local))
    assert sorted_rows(remote, "customer_months") == sorted_rows(DataLayout(local), "customer_months")
    assert lake.versions(remote, INGEST_TABLES) == {
        t: 1 for t in INGEST_TABLES
    }  # one commit each, no duplicates
    assert lake.last_run_id(remote, "events") == first["run_id"]

    # a rerun of the same input: every line a duplicate or an already-recorded dead letter, no new rows
    before = counts(remote)
    revenue("ingest", "--input", events, "--data-dir", str(data), "--lake", uri)
    again = manifest(data, "ingest")["counts"]
    assert again["rows_written"] == 0
    assert again["lines_read"] == first["counts"]["lines_read"] == again["duplicates"] + again["dead_letters"]
    assert again["lines_read"] == truth(source)["counts"]["lines"]
    assert counts(remote) == before
    assert (
        pc.count_distinct(lake.read_table(remote, "events", ["event_id"])["event_id"]).as_py()
        == before["events"]
    )

    # maintenance on the object store: compaction, checkpoint, vacuum; the same rows
    revenue("maintain", "--data-dir", str(data), "--lake", uri, "--retention-hours", "0")
    assert counts(remote) == before

    # nothing of the lake on the local disk: no lake folder, no staging, no lock; the lease is gone
    assert not any((d / "lake").exists() for d in dirs)
    client = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"], region_name="us-east-1")
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]  # fmt: skip
    assert keys and all(k.startswith("lake/") for k in keys)
    # (pyarrow leaves an empty "lake/_staging/" folder marker when it deletes a run's scratch folder)
    assert not [
        k for k in keys if k.startswith("lake/_staging/") and not k.endswith("/") or k == "lake/_lease.json"
    ]
    assert any(k.startswith("lake/events/_delta_log/") for k in keys)


def test_the_lease_admits_one_writer_and_is_taken_over_when_its_holder_died(
    s3_env, bucket, tmp_path, monkeypatch
):
    from pipelines import lease
    from pipelines.layout import DERIVED_SCOPE, DataLayout
    from transforms.errors import LakeError

    layout = DataLayout(tmp_path, f"s3://{bucket}/lake")
    with lease.writer_lease(layout):
        with pytest.raises(LakeError, match="another run is writing"):
            with lease.writer_lease(layout):
                pass
        with lease.writer_lease(layout, DERIVED_SCOPE):  # the derived tables have a lease of their own
            with pytest.raises(LakeError, match="lease held on the derived tables"):
                with lease.writer_lease(layout, DERIVED_SCOPE):
                    pass
    # a holder that died without releasing (kill -9): a process of this host that no longer exists
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    client = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"], region_name="us-east-1")
    client.put_object(
        Bucket=bucket,
        Key="lake/_lease.json",
        Body=json.dumps(
            {"token": "gone", "host": socket.gethostname(), "pid": int(dead.stdout), "seconds": 600}
        ).encode(),
    )
    with lease.writer_lease(layout):
        held = json.loads(client.get_object(Bucket=bucket, Key="lake/_lease.json")["Body"].read())
        assert held["pid"] == os.getpid()
    # another machine's live lease is respected until it expires
    client.put_object(
        Bucket=bucket,
        Key="lake/_lease.json",
        Body=json.dumps({"token": "other", "host": "another-machine", "pid": 1, "seconds": 600}).encode(),
    )
    with pytest.raises(LakeError, match="lease held by pid 1 on another-machine"):
        with lease.writer_lease(layout):
            pass


def test_a_local_only_stage_refuses_an_object_store_lake_in_one_line(s3_env, tmp_path):
    proc = revenue("transform", "--data-dir", str(tmp_path / "d"), env={"REVENUE_LAKE_URI": "s3://some-bucket/lake"},
                   check=False)  # fmt: skip
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "reads the lake from DATA_DIR/lake" in lines[0]


def test_unsafe_rename_is_refused(s3_env, tmp_path, monkeypatch):
    from pipelines.config import build_config
    from transforms.errors import ConfigError

    monkeypatch.setenv("AWS_S3_ALLOW_UNSAFE_RENAME", "true")
    with pytest.raises(ConfigError, match="AWS_S3_ALLOW_UNSAFE_RENAME"):
        build_config(tmp_path, lake_uri="s3://some-bucket/lake")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_commit_on_top_of_a_stale_version_fails_instead_of_adding_a_second_runs_rows(
    where, request, tmp_path
):
    """The guard behind the lease: a run commits on top of the version it read; if another writer
    committed to the table since, Delta's conflict check (app transaction ``revenue-<table>``)
    refuses it with one line, and nothing of the run is visible."""
    import pyarrow as pa

    from pipelines import lake
    from pipelines.layout import DataLayout
    from transforms import schemas
    from transforms.errors import LakeError

    uri = None if where == "local" else f"s3://{request.getfixturevalue('bucket')}/lake"
    layout = DataLayout(tmp_path, uri)
    import datetime as dt

    table = pa.Table.from_pylist([{"action": "close", "acted_at": dt.datetime(2025, 2, 1, tzinfo=dt.UTC),
                                   "acted_by": "finance", "note": None, "lake_versions": "{}",
                                   "month": dt.date(2025, 1, 1)}],
                                 schema=schemas.with_partition_column("period_closes"))  # fmt: skip

    def write(run: str) -> list[str]:
        return lake.write_partitioned(table, layout.table_path("period_closes"), "month", f"part-{run}.parquet",
                                      [("acted_at", "ascending")], layout.store)  # fmt: skip

    lake.commit(layout, "period_closes", write("runa"), "runa")
    read = lake.table_version(layout, "period_closes")  # both runs start from here
    lake.commit(layout, "period_closes", write("runb"), "runb", read_version=read)
    with pytest.raises(LakeError, match="another run committed to period_closes") as raised:
        lake.commit(layout, "period_closes", write("runc"), "runc", read_version=read)
    assert "\n" not in str(raised.value)
    assert lake.read_table(layout, "period_closes").num_rows == 2
    assert lake.last_run_id(layout, "period_closes") == "runb"
