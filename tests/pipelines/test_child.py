"""`pipelines.child`: a stage in a fresh interpreter (started for it, or ahead of it) returns, fails and dies as
the run expects; the dbt started ahead of a build runs it."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, wait_until

from pipelines import transform
from pipelines.child import PreparedChild, StageCrashed, run_in_child
from transforms.errors import ConfigError, QualityGateFailed

HERE = Path(__file__).resolve().parent


def _pid_and_memory(size: int) -> tuple[int, int]:
    block = bytearray(size)  # touched pages: this process's peak, not the caller's
    return os.getpid(), len(block)


def _fails_as_configured(message: str):
    raise ConfigError(message)


def _gate_fails():
    raise QualityGateFailed("data-quality gate failed, published warehouse left untouched: suite: check(col)")


def _bug():
    return {}["missing key in the child"]


def _killed():
    os.kill(os.getpid(), signal.SIGKILL)


def _sleep_writing_pid(path: str) -> None:
    Path(path).write_text(str(os.getpid()))
    time.sleep(120)


def _warm_up():
    os.environ["REVENUE_TEST_WARMED_IN"] = str(os.getpid())


def _warm_up_fails():
    raise OSError("cannot import a module")


def _where_warmed() -> tuple[int, str | None]:
    return os.getpid(), os.environ.get("REVENUE_TEST_WARMED_IN")


def test_a_prepared_child_warms_up_before_its_call_in_the_same_process():
    child = PreparedChild("test", warm=_warm_up)
    pid, warmed_in = child.call(_where_warmed)
    assert pid != os.getpid() and warmed_in == str(pid)
    child.close()  # after the call: nothing left to do


def test_a_failed_warm_up_is_the_calls_crash():
    with pytest.raises(StageCrashed) as raised:
        PreparedChild("test", warm=_warm_up_fails).call(_where_warmed)
    assert "cannot import a module" in str(raised.value) and "_warm_up_fails" in str(raised.value)


def _sleep_at_exit() -> None:
    import atexit
    import time

    atexit.register(time.sleep, 1.5)


def test_a_call_that_does_not_wait_returns_before_the_child_has_exited_and_close_waits_for_it():
    child = PreparedChild("test", warm=_sleep_at_exit)
    pid, _ = child.call(_where_warmed, wait=False)
    assert pid != os.getpid() and child._process.is_alive()  # still shutting down
    child.close()
    assert not child._process.is_alive() and child._process.exitcode == 0


def test_closing_a_prepared_child_that_was_never_called_ends_it():
    child = PreparedChild("test", warm=_warm_up)
    process = child._process
    child.close()
    assert not process.is_alive() and process.exitcode is not None


def test_the_dbt_started_ahead_runs_the_build_command_with_the_builds_environment(tmp_path):
    """`prewarm_dbt` starts dbt before the build is known; `_run_dbt` hands it the command line and the
    environment, and it behaves as the `dbt` command: output, exit status."""
    transform.prewarm_dbt()
    warm = transform._warm_dbt
    profiles = tmp_path / "profiles-of-this-build"  # given only in the build's environment
    try:
        failed = transform._run_dbt([transform.dbt_executable(), "build", "--project-dir", str(tmp_path)],
                                    dict(os.environ, DO_NOT_TRACK="1", DBT_PROFILES_DIR=str(profiles)))  # fmt: skip
        assert transform._warm_dbt is None and warm.returncode == failed.returncode == 2
        assert f"Path '{profiles}' does not exist" in failed.stderr
        # a second build in the process starts its own dbt
        done = transform._run_dbt([transform.dbt_executable(), "--version"], dict(os.environ, DO_NOT_TRACK="1"))
        assert done.returncode == 0 and "Core" in done.stdout + done.stderr
    finally:
        if warm.poll() is None:
            warm.kill()
        transform._warm_dbt = None


def _tiny_dbt_project(root):
    (root / "models").mkdir(parents=True)
    (root / "dbt_project.yml").write_text("name: tiny\nversion: '1.0'\nconfig-version: 2\nprofile: tiny\n")
    (root / "profiles.yml").write_text("tiny:\n  target: t\n  outputs:\n    t:\n      type: duckdb\n"
                                       "      path: \"{{ env_var('TINY_DB') }}\"\n")  # fmt: skip
    (root / "models" / "first.sql").write_text("select 1 as x")


def test_the_dbt_started_ahead_reuses_the_manifest_it_parsed_for_a_build_with_the_same_environment(tmp_path):
    """`_parse_ahead` has the waiting dbt parse while the build's lake copy loads; the command that
    follows reuses that manifest only when its environment is the parse's (else dbt parses again).
    A model added after the parse shows which manifest the command used."""
    project = tmp_path / "project"
    _tiny_dbt_project(project)
    cmd = [transform.dbt_executable(), "ls", "--project-dir", str(project), "--profiles-dir", str(project),
           "--target-path", str(tmp_path / "target"), "--log-level-file", "none"]  # fmt: skip
    env = dict(os.environ, DO_NOT_TRACK="1", TINY_DB=str(tmp_path / "tiny.duckdb"))
    for command_env, reused in ((env, True), (dict(env, TINY_DB=str(tmp_path / "other.duckdb")), False)):
        (project / "models" / "second.sql").unlink(missing_ok=True)
        shutil.rmtree(tmp_path / "target", ignore_errors=True)
        transform.prewarm_dbt()
        try:
            transform._parse_ahead(cmd, env)
            # the parse writes its manifest last; a model added before that could be seen by it
            assert wait_until(lambda: (tmp_path / "target" / "manifest.json").exists(), 60)
            time.sleep(0.3)
            (project / "models" / "second.sql").write_text("select 2 as x")
            listed = transform._run_dbt(cmd, command_env)
        finally:
            if transform._warm_dbt is not None and transform._warm_dbt.poll() is None:
                transform._warm_dbt.kill()
            transform._warm_dbt = None
        assert listed.returncode == 0, listed.stdout + listed.stderr
        assert "tiny.first" in listed.stdout and ("tiny.second" in listed.stdout) is not reused


def test_the_value_comes_back_from_another_process():
    pid, size = run_in_child(_pid_and_memory, 50_000_000, name="test")
    assert pid != os.getpid() and size == 50_000_000


@pytest.mark.parametrize("fn, args, kind, text", [
    (_fails_as_configured, ("bad --as-of",), ConfigError, "bad --as-of"),
    (_gate_fails, (), QualityGateFailed, "suite: check(col)"),
])  # fmt: skip
def test_an_error_is_raised_again_in_the_parent_with_its_type(fn, args, kind, text):
    """The CLI's boundary maps the error's type to the exit status (2 for a failed gate): it must survive."""
    with pytest.raises(kind) as raised:
        run_in_child(fn, *args, name="test")
    assert type(raised.value) is kind and text in str(raised.value)


def test_a_bug_in_the_child_is_a_crash_with_its_traceback():
    with pytest.raises(StageCrashed) as raised:
        run_in_child(_bug, name="test")
    message = str(raised.value)
    assert "KeyError" in message and "missing key in the child" in message and "_bug" in message


def test_a_child_killed_by_the_kernel_is_a_crash_not_a_hang():
    with pytest.raises(StageCrashed, match=r"the test process died \(exit -9\)"):
        run_in_child(_killed, name="test")


def test_killing_the_parent_kills_the_stage():
    """kill -9 of `revenue run` must not leave its transform running on (it would publish after the run died)."""
    pid_file = Path(os.environ.get("TMPDIR", "/tmp")) / f"revenue-child-{os.getpid()}-{time.time_ns()}"
    paths = [str(HERE), str(HERE.parent), str(REPO)]
    code = (f"import sys; sys.path[:0] = {paths!r}; from pipelines.child import run_in_child; "
            f"from test_child import _sleep_writing_pid; run_in_child(_sleep_writing_pid, {str(pid_file)!r})")
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
    try:
        assert wait_until(lambda: pid_file.exists() and pid_file.read_text(), timeout=60), "the child never started"
        child = int(pid_file.read_text())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()

        def gone() -> bool:
            try:
                return Path(f"/proc/{child}/stat").read_text().split(") ")[1][0] in "ZX"
            except OSError:
                return True

        assert wait_until(gone, timeout=10)
    finally:
        parent.kill()
        pid_file.unlink(missing_ok=True)


@pytest.mark.slow
def test_a_run_whose_gate_fails_shows_the_gate_and_exits_2(tmp_path):
    """`revenue run` builds, gates and publishes in a child process: the gate's table still reaches the
    user, the exit status is still 2, nothing is published, and the manifest keeps the child's peak."""
    lines = [json.dumps({"event_id": f"u{i}", "event_type": "usage.recorded", "occurred_at": "2024-05-02T00:00:00Z",
                         "customer_id": f"c{i % 5}", "meter": "api_calls", "quantity": 10}) for i in range(97)]
    lines += ["{oops", "{still bad", "[]"]  # 3 % dead letters
    events = tmp_path / "in" / "a.jsonl"
    events.parent.mkdir()
    events.write_text("\n".join(lines) + "\n")
    data = tmp_path / "data"
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "--quiet", "--input", str(events.parent),
                           "--data-dir", str(data), "--dead-letter-critical", "0.02", "--dead-letter-warning", "0.01"],
                          capture_output=True, text=True, cwd=REPO)  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "data-quality gate: FAILED" in proc.stdout and "lake_ingest_summary" in proc.stdout
    assert "dead_letter_ratio" in proc.stderr and "Traceback" not in proc.stderr
    assert not (data / "warehouse" / "revenue.duckdb").exists()
    manifest = json.loads(sorted((data / "runs").glob("*-run.json"))[-1].read_text())
    assert manifest["status"] == "quality_gate_failed"
    assert manifest["peak_rss_mb"]["transform_process"] > 0
    assert manifest["transform_started"] == "with the run"  # a small input: started beside the ingest
    assert manifest["timings"]["transform"] > 0
