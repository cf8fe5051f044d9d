"""`revenue transform`: dbt build into a warehouse copy, gate it, publish it atomically.

The copy starts from the published warehouse when it is compatible, and its lake copy is brought
to the pinned Delta versions from the log (``pipelines.warehouse_lake``); dbt's incremental marts
then recompute what changed. Otherwise (``--full-refresh``, a changed project or configuration)
the build starts empty and everything is built.

The published file ``DATA_DIR/warehouse/revenue.duckdb`` is only ever replaced by
``os.replace`` of a fully built, tested (and, when a gate is given, validated) file.
Readers that hold the old file open keep reading the old version; they never block
the build and never see a half-built warehouse. A failed build or gate leaves the
published file byte-for-byte untouched.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import fcntl
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from pipelines import closes, lake, quality, warehouse_lake
from pipelines.config import RunConfig
from pipelines.layout import DataLayout
from pipelines.manifest import new_run_id, write_manifest
from pipelines.warehouse_lake import MEMORY_LIMIT_ENV, memory_limit
from transforms import schemas
from transforms.errors import BuildFailed, ConfigError, InputError, LakeError

log = logging.getLogger(__name__)

PROJECT_DIR = Path(__file__).resolve().parent.parent / "dbt_project"
PR_SET_PDEATHSIG = 1  # prctl(2) option
LAKE_SOURCES = warehouse_lake.LAKE_SOURCES
CONTRACT_TABLES = ("fct_mrr", "mrr_monthly", "dim_customers", "fct_revenue_daily", "fct_usage_monthly",
                   "fct_cohort_retention")  # fmt: skip


@dataclass
class TransformResult:
    run_id: str
    published: Path
    as_of: dt.date
    reporting_currency: str
    dbt_seconds: float
    seconds: float
    nodes: dict = field(default_factory=dict)
    gate: dict | None = None
    lake_versions: dict = field(default_factory=dict)
    lake_load: dict = field(default_factory=dict)  # warehouse_lake.LoadResult: full or incremental, and what changed
    steps: dict = field(default_factory=dict)  # seconds of each step: project, load (copy included), dbt, gate, ...
    restatements: dict = field(default_factory=dict)  # closed months restated by this build (pipelines.closes)
    prepared_ahead: bool = False  # the project's copy and dbt's parse were made ahead (``prepare_ahead``)


def check_lake_matches(config: RunConfig) -> None:
    """The lake's customer_months must be the metrics stage's output for this as-of date and currency."""
    layout = config.layout
    computed = [d.isoformat() for d in lake.partition_values(layout, "customer_lifetime")]
    if not computed:
        raise InputError(f"no customer_lifetime in {layout.lake}: run `revenue metrics` first")
    if computed != [config.as_of.isoformat()]:
        raise ConfigError(f"the lake's customer_months were computed as of {computed[-1]}, not {config.as_of}: "
                          f"run `revenue metrics --as-of {config.as_of}` or pass --as-of {computed[-1]}")  # fmt: skip
    runs = {table: lake.last_run_id(layout, table) for table in schemas.DERIVED_TABLES}
    if len(set(runs.values())) != 1:
        raise InputError("the lake's derived tables come from different metrics runs (an interrupted run?): "
                         + ", ".join(f"{t} {r}" for t, r in runs.items()) + "; run `revenue metrics` again")  # fmt: skip
    currencies = set(lake.read_table(layout, "customer_lifetime", ["reporting_currency"])["reporting_currency"]
                     .unique().to_pylist())  # fmt: skip
    if currencies - {config.reporting_currency}:
        raise ConfigError(f"the lake's customer_months are in {', '.join(sorted(currencies))}, not "
                          f"{config.reporting_currency}: run `revenue metrics --reporting-currency "
                          f"{config.reporting_currency}` or pass the same --reporting-currency")  # fmt: skip


def dbt_executable() -> str:
    candidate = Path(sys.executable).parent / "dbt"
    return str(candidate) if candidate.exists() else "dbt"


def _failures(target: Path) -> list[str]:
    path = target / "run_results.json"
    if not path.exists():
        return []
    results = json.loads(path.read_text())["results"]
    out = []
    for r in results:
        if r["status"] in ("error", "fail", "runtime error"):
            detail = (r.get("message") or "").splitlines()[0][:300] if r.get("message") else r["status"]
            out.append(f"{r['unique_id']} ({r['status']}: {detail})")
    return out


def _lock_builds(layout: DataLayout):
    """The data dir's build lock, taken (an open file: closing it releases the lock), or LakeError;
    leftover build folders of killed builds are removed."""
    layout.warehouse_dir.mkdir(parents=True, exist_ok=True)
    handle = open(layout.warehouse_dir / ".lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise LakeError(f"another build is running in {layout.warehouse_dir}; wait for it to finish") from None
    for stale in layout.stale_builds():
        log.warning("removing the leftover build folder %s of an interrupted run", stale)
        shutil.rmtree(stale, ignore_errors=True)
    return handle


@contextlib.contextmanager
def warehouse_lock(layout: DataLayout):
    """One build at a time per data dir; a build killed earlier leaves a folder that the next one removes.
    A lock this process took ahead (``prepare_ahead``) is this build's."""
    global _ahead
    ahead, _ahead = _ahead, None
    if ahead is not None and ahead.warehouse_dir != layout.warehouse_dir:
        ahead.handle.close()  # prepared for another data dir
        ahead = None
    handle = ahead.handle if ahead is not None else _lock_builds(layout)
    try:
        yield ahead
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


# Runs first in the child, then becomes dbt: asks the kernel for SIGKILL when the parent dies (even
# by kill -9), so no build outlives its run. A fresh interpreter does it rather than a preexec_fn,
# which is unsafe in a process with threads (Beam, DuckDB and Arrow all start threads).
PARENT_GUARD = (
    "import ctypes, json, os, signal, sys\n"
    f"ctypes.CDLL(None, use_errno=True).prctl({PR_SET_PDEATHSIG}, signal.SIGKILL)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit('the run that started this build has ended')\n"
)
# dbt started ahead of its build (``prewarm_dbt``): the same guard, then dbt's imports (about 2 s of
# one core), then lines on stdin: optionally a parse of the project (``_parse_ahead``), then the
# build's command line and environment, run as the `dbt` command would. A build with the environment
# of the parse before it takes its manifest (dbt's documented reuse of a parsed manifest by dbtRunner)
# instead of parsing again; exit status as the `dbt` command's: 0 success, 1 failure, 2 error.
# Once dbt has written its results and its exit handlers have run (dbt-duckdb's closes the build
# file, which checkpoints it), the process ends without the interpreter's teardown (~0.7 s of freeing
# dbt's objects, which the build waited for). An empty stdin (the build never came) exits.
WARM_DBT = PARENT_GUARD + (
    "from dbt.cli.main import cli, dbtRunner\n"
    "manifest = parsed_env = None\n"
    "while True:\n"
    "    request = sys.stdin.readline()\n"
    "    if not request:\n"
    "        sys.exit(0)\n"
    "    request = json.loads(request)\n"
    "    os.environ.clear()\n"
    "    os.environ.update(request['env'])\n"
    "    if request.get('parse'):\n"
    "        result = dbtRunner().invoke(request['argv'][1:])\n"
    "        ok = result.success and result.result is not None\n"
    "        manifest, parsed_env = (result.result, request['env']) if ok else (None, None)\n"
    "        continue\n"
    "    sys.argv = request['argv']\n"
    "    if manifest is None or request['env'] != parsed_env:\n"
    "        try:\n"
    "            cli()\n"
    "            code = 0\n"
    "        except SystemExit as done:\n"
    "            code = done.code if isinstance(done.code, int) else 0 if done.code is None else 1\n"
    "    else:\n"
    "        result = dbtRunner(manifest=manifest).invoke(request['argv'][1:])\n"
    "        if result.exception is not None:\n"
    "            print(f'dbt: {result.exception}', file=sys.stderr)\n"
    "        code = 0 if result.success else 1 if result.exception is None else 2\n"
    "    import atexit\n"
    "    atexit._run_exitfuncs()  # dbt-duckdb's closes the database: DuckDB checkpoints its WAL into the file\n"
    "    sys.stdout.flush()\n"
    "    sys.stderr.flush()\n"
    "    os._exit(code)\n"
)
_warm_dbt: subprocess.Popen | None = None


def prewarm_dbt() -> None:
    """Start dbt now, waiting for the build ``_dbt_build`` will give it, so its imports load while this
    process does other work (a run's ingest and metrics, a stream's wait for the next publish). Call
    from the main thread of a process that builds once; a process that never builds leaves it to
    exit when this one does (its stdin closes)."""
    global _warm_dbt
    if _warm_dbt is None:
        _warm_dbt = _start_dbt(dict(os.environ, DO_NOT_TRACK="1", DBT_SEND_ANONYMOUS_USAGE_STATS="false"))


def _start_dbt(env: dict[str, str]) -> subprocess.Popen:
    """A dbt process (``WARM_DBT``) waiting for its requests on stdin."""
    return subprocess.Popen([sys.executable, "-c", WARM_DBT, str(os.getpid())], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip


def _parse_ahead(cmd: list[str], env: dict[str, str]) -> None:
    """Have the dbt ``prewarm_dbt`` started parse the project now (``cmd``: dbt's command line, whose
    options are kept and command becomes ``parse``), while this process loads the build's lake copy;
    the build that follows with the same environment reuses that manifest (``WARM_DBT``). No-op
    without a waiting dbt. The project must not change in between."""
    warm = _warm_dbt
    if warm is not None and warm.poll() is None:
        parse = [cmd[0], "parse", "--quiet", *cmd[2:]]
        try:
            warm.stdin.write(json.dumps({"parse": True, "argv": parse, "env": env}) + "\n")
            warm.stdin.flush()
        except OSError:  # it died: the build starts a new dbt (``_run_dbt``)
            pass


def _run_dbt(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """``cmd`` (dbt's command line) in the dbt ``prewarm_dbt`` started if it is still waiting, else in a
    new one; killed with this process either way."""
    global _warm_dbt
    warm, _warm_dbt = _warm_dbt, None
    if warm is None or warm.poll() is not None:  # none waiting (or it died): a new one, told at once
        warm = _start_dbt(env)
    stdout, stderr = warm.communicate(json.dumps({"argv": cmd, "env": env}) + "\n")
    return subprocess.CompletedProcess(cmd, warm.returncode, stdout, stderr)


def _dbt_env(config: RunConfig, build_root: Path, build_file: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "DO_NOT_TRACK": "1", "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
        "REVENUE_WAREHOUSE_BUILD": str(build_file), "REVENUE_AS_OF": config.as_of.isoformat(),
        "REVENUE_REPORTING_CURRENCY": config.reporting_currency,
        "REVENUE_REPORTING_EXPONENT": str(config.reporting_exponent),
    })  # fmt: skip
    # as importing the quality gate sets it: the environment of a build prepared before that import
    # (``prepare_ahead``) is then the build's
    env.setdefault("GX_ANALYTICS_ENABLED", "False")
    return env


def build_fingerprint(project: Path, config: RunConfig) -> str:
    """What a warehouse's models depend on besides the lake: the dbt project as copied for the build
    (models, macros, tests, seeds including the FX table written for this run), the reporting
    currency and the lake copy's format. A build whose fingerprint differs from the published one's
    rebuilds everything."""
    digest = hashlib.sha256(f"{warehouse_lake.LOAD_FORMAT}|{config.reporting_currency}|"
                            f"{config.reporting_exponent}".encode())  # fmt: skip
    for path in sorted(p for p in project.rglob("*") if p.is_file()):
        digest.update(path.relative_to(project).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _start_build(config: RunConfig, project: Path, build_file: Path,
                 pinned: dict[str, int]) -> warehouse_lake.LoadResult:  # fmt: skip
    """The build file with its lake copy at ``pinned``: a copy of the published warehouse brought up
    to date incrementally when it is compatible, else a fresh file loaded in full."""
    fingerprint = build_fingerprint(project, config)
    state, reason = warehouse_lake.plan(config.layout, pinned, fingerprint, config.full_refresh)
    if state is not None:
        shutil.copyfile(config.layout.warehouse, build_file)  # the published file is never opened for writing
    return warehouse_lake.load(build_file, config.layout, pinned, state=state, reason=reason, as_of=config.as_of,
                               fingerprint=fingerprint)  # fmt: skip


# what an incremental build whose views are current (``LoadResult.views_current``) still builds
REBUILT_MATERIALIZATIONS = ("table", "incremental")


def _build_paths(layout: DataLayout) -> tuple[Path, Path]:
    """The build folder and file: the file's path is in dbt's profile, and a path that changed would
    make dbt parse everything again, so every build uses the same ones."""
    build_root = layout.dbt_workspace / "build"
    return build_root, build_root / layout.warehouse.name


def _fx_seed_text(config: RunConfig) -> str:
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(["date", "currency", "rate"])
    for day, currency, rate in config.fx.rows():
        writer.writerow([day.isoformat(), currency, format(rate, "f")])
    return out.getvalue()


def _build_command(config: RunConfig) -> tuple[list[str], dict[str, str], str]:
    """dbt's command line and environment for a build of ``config``, and the FX seed's text."""
    layout = config.layout
    build_root, build_file = _build_paths(layout)
    project, target = layout.dbt_workspace / "project", layout.dbt_workspace / "target"
    # no log file: it would go to the build folder, removed after the build (what dbt prints is kept on failure)
    cmd = [dbt_executable(), "build", "--project-dir", str(project), "--profiles-dir", str(project),
           "--target-path", str(target), "--log-path", str(build_root / "logs"), "--log-level-file", "none",
           "--no-use-colors"]  # fmt: skip
    return cmd, _dbt_env(config, build_root, build_file), _fx_seed_text(config)


def _copy_project(config: RunConfig, seed: str) -> None:
    """The build's copy of the dbt project, with ``seed`` as its FX table."""
    workspace = config.layout.dbt_workspace
    project = workspace / "project"
    shutil.rmtree(project, ignore_errors=True)  # a fresh copy, at the same path as the previous build's
    shutil.copytree(PROJECT_DIR, project, ignore=shutil.ignore_patterns("target", "logs", "*.duckdb*"),
                    copy_function=shutil.copyfile)  # new files under the umask: this copy stays between builds
    (project / "seeds" / "fx_rates.csv").write_text(seed, newline="")


@dataclass
class _Ahead:
    """What ``prepare_ahead`` did for the build that follows in this process."""

    warehouse_dir: Path
    handle: object  # the build lock's open file
    cmd: list[str] | None = None  # the command, environment and FX seed the project was copied and parsed for
    env: dict[str, str] | None = None
    seed: str | None = None
    used: bool = False  # the build found them as it needs them


_ahead: _Ahead | None = None


def prepare_ahead(config: RunConfig) -> None:
    """Before the build is asked for (``revenue run`` hints this to its transform process once the
    ingest has fixed the as-of date, while the metrics stage runs): take the data dir's build lock,
    clear the build folder, copy the dbt project and have the waiting dbt (``prewarm_dbt``) parse it.
    The build that follows in this process (``run_transform``) keeps the lock, and uses the copy and
    the parse when its command, environment and FX table are the ones prepared (else it does both
    again). Without a waiting dbt, or with the lock held by another build (which the build then
    reports), it does nothing."""
    global _ahead
    if _warm_dbt is None or _warm_dbt.poll() is not None or _ahead is not None:
        return
    layout = config.layout
    try:
        handle = _lock_builds(layout)
    except LakeError:
        return
    _ahead = _Ahead(layout.warehouse_dir, handle)
    build_root, _ = _build_paths(layout)
    shutil.rmtree(build_root, ignore_errors=True)  # what a killed build left
    build_root.mkdir(parents=True)
    cmd, env, seed = _build_command(config)
    _copy_project(config, seed)
    _parse_ahead(cmd, env)
    _ahead.cmd, _ahead.env, _ahead.seed = cmd, env, seed


def _dbt_build(config: RunConfig, run_id: str, build_root: Path, build_file: Path, pinned: dict[str, int],
               steps: dict, before_dbt: Callable[[Path], bool] | None = None, ahead: _Ahead | None = None,
               ) -> tuple[float, dict, warehouse_lake.LoadResult]:  # fmt: skip
    """Copy the project, bring the build's lake copy to the pinned versions, run ``dbt build`` into
    ``build_file`` (incremental models recompute what changed); raise BuildFailed with the failing nodes.
    ``steps`` receives the seconds of each step. ``ahead``: the copy and parse ``prepare_ahead`` made."""
    mark = time.monotonic()
    target = config.layout.dbt_workspace / "target"
    cmd, env, seed = _build_command(config)
    (target / "run_results.json").unlink(missing_ok=True)  # only this build's results are read back
    if ahead is not None:
        ahead.used = (ahead.cmd, ahead.env, ahead.seed) == (cmd, env, seed)
    if ahead is None or not ahead.used:
        _copy_project(config, seed)
        _parse_ahead(cmd, env)  # dbt parses the project (it reads no data) while the lake copy loads
    project = config.layout.dbt_workspace / "project"
    steps["project"] = round(time.monotonic() - mark, 3)
    mark = time.monotonic()
    loaded = _start_build(config, project, build_file, pinned)
    closes.prepare_build(build_file, config.layout)  # closed periods (CONTRACT section 7): their sources
    steps["load"] = round(time.monotonic() - mark, 3)
    if before_dbt is not None:  # the gate's lake suites, beside dbt when they can (``warehouse_gate``)
        mark = time.monotonic()
        if before_dbt(build_file):  # their rows, read before dbt takes the build file
            steps["lake_frames"] = round(time.monotonic() - mark, 3)
    # dbt's unit tests check the models' SQL on fixed fixtures, whatever the data: `make test` runs
    # them (tests/dbt), as dbt recommends, and no build pays for them again (~1.5 s of CPU a full build)
    excluded = ["test_type:unit"]
    if loaded.mode == "incremental":
        excluded.append("resource_type:seed")  # same fingerprint as the published build: its seeds are loaded
    cmd += ["--exclude", *excluded]
    if loaded.mode == "incremental" and loaded.views_current:
        # the copy's views already have the definitions dbt would create again (~0.1 s of dbt each):
        # build the tables and run every test, the views' included (their data changed)
        cmd += ["--select", "resource_type:test", *(f"config.materialized:{m}" for m in REBUILT_MATERIALIZATIONS)]
    started = time.monotonic()
    proc = _run_dbt(cmd, env)
    seconds = steps["dbt"] = round(time.monotonic() - started, 3)
    if proc.returncode != 0:
        failures = _failures(target)
        log_copy = config.layout.dbt_failure_log(run_id)
        log_copy.write_text(proc.stdout + proc.stderr)
        what = "; ".join(failures[:5]) if failures else (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:]
        raise BuildFailed(f"dbt build failed, published warehouse left untouched: {what} (log: {log_copy})")
    return seconds, _node_counts(target), loaded


def run_transform(config: RunConfig, gate: Callable[[Path], dict] | None = None, run_id: str | None = None,
                  write_run_manifest: bool = True, pinned: dict[str, int] | None = None) -> TransformResult:  # fmt: skip
    """Build, test, optionally gate, then publish. ``gate(build_file)`` raises QualityGateFailed to stop."""
    started = time.monotonic()
    layout = config.layout
    run_id = run_id or new_run_id()
    with lake.lake_lock(layout, (lake.DERIVED_SCOPE,)):  # no metrics run half-way through its commits
        config = config.resolve_as_of()
        check_lake_matches(config)
        # the versions this build reads: the caller's (the run's own metrics), else the current ones
        pinned = pinned if pinned is not None else lake.versions(layout, LAKE_SOURCES)
    published = layout.warehouse
    steps = {"prepare": round(time.monotonic() - started, 3)}
    with warehouse_lock(layout) as ahead:
        build_root, build_file = _build_paths(layout)
        try:
            if ahead is None:  # else prepare_ahead cleared it (and dbt may be writing to it)
                shutil.rmtree(build_root, ignore_errors=True)  # what a killed build left
            build_root.mkdir(parents=True, exist_ok=True)  # there unless prepare_ahead stopped before it
            if gate is not None:  # the gate's imports (and set-up, when it can) load while dbt builds
                getattr(gate, "prepare", quality.prewarm)()
            try:
                before_dbt = getattr(gate, "before_build", None) if gate is not None else None
                try:
                    dbt_seconds, nodes, loaded = _dbt_build(config, run_id, build_root, build_file, pinned, steps,
                                                            before_dbt, ahead)  # fmt: skip
                except BaseException:
                    getattr(gate, "abandon", lambda: None)()  # its lake suites, if started, finish first
                    raise
                mark = time.monotonic()
                gate_result = gate(build_file) if gate is not None else None  # QualityGateFailed: nothing published
                steps["gate"] = round(time.monotonic() - mark, 3)
                mark = time.monotonic()
                restatements = closes.record_restatements(config, run_id, build_file, pinned)  # closed periods
                steps["restatements"] = round(time.monotonic() - mark, 3)
                mark = time.monotonic()
            except duckdb.OutOfMemoryException as exc:
                raise BuildFailed(f"DuckDB reached its memory limit ({memory_limit()}) loading or validating the "
                                  f"build, published warehouse left untouched: raise {MEMORY_LIMIT_ENV} "
                                  f"({str(exc).splitlines()[0]})") from exc  # fmt: skip
            _checkpointed(build_file)
            os.replace(build_file, published)
            lake.fsync_dir(published.parent)
            steps["publish"] = round(time.monotonic() - mark, 3)
        finally:
            shutil.rmtree(build_root, ignore_errors=True)
    result = TransformResult(run_id=run_id, published=published, as_of=config.as_of,
                             reporting_currency=config.reporting_currency, dbt_seconds=dbt_seconds,
                             seconds=round(time.monotonic() - started, 3), nodes=nodes, gate=gate_result,
                             lake_versions=pinned, lake_load=loaded.as_dict(), restatements=restatements,
                             steps=steps, prepared_ahead=ahead is not None and ahead.used)  # fmt: skip
    if write_run_manifest:
        write_manifest(layout, run_id, "transform", {
            "warehouse": str(published), "config": config.describe(), "lake_versions": pinned,
            "dbt_seconds": dbt_seconds, "seconds": result.seconds, "steps": steps, "nodes": nodes,
            "lake_load": result.lake_load, "restatements": restatements,
        })  # fmt: skip
    return result


def _checkpointed(build_file: Path) -> None:
    """Make sure every change is in the build file itself before it is published alone: a write-ahead
    log beside it (a writer that ended without closing the file) is checkpointed into it."""
    if Path(f"{build_file}.wal").exists():
        con = warehouse_lake.connect(build_file)  # under the builds' DuckDB memory limit
        con.execute("checkpoint")
        con.close()


def _node_counts(target: Path) -> dict:
    path = target / "run_results.json"
    if not path.exists():
        return {}
    counts: dict[str, int] = {}
    for r in json.loads(path.read_text())["results"]:
        kind = r["unique_id"].split(".")[0]
        counts[f"{kind}:{r['status']}"] = counts.get(f"{kind}:{r['status']}", 0) + 1
    return dict(sorted(counts.items()))
