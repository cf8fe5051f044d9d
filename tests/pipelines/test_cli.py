"""The CLI's one error boundary: usage and configuration errors are one line and exit 1, checked
before anything is written; flags beat environment variables, which beat defaults."""

import fcntl
import os
import subprocess
import sys

import pytest
from conftest import REPO

from pipelines.config import GateThresholds, build_config
from pipelines.layout import DataLayout
from transforms.errors import ConfigError

pytestmark = pytest.mark.slow  # subprocesses


def cli(*args, env=None):
    full = {k: v for k, v in os.environ.items() if not k.startswith("REVENUE_")}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, cwd=REPO,
                          env=full)  # fmt: skip


def one_error_line(proc) -> str:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error") or ln.startswith("Error")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.parametrize(("args", "message"), [
    (["run", "--as-of", "2025-13-01", "--data-dir", "{d}"], "is not a date"),
    (["bogus"], "No such command"),
    (["report", "--data-dir", "{d}"], "Missing option '--month'"),
    (["generate", "--customers", "0", "--output", "{d}"], "--customers"),
])  # fmt: skip
def test_usage_errors_exit_1_not_2(tmp_path, args, message):
    assert message in one_error_line(cli(*[a.format(d=tmp_path / "d") for a in args]))
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--reporting-currency", "XAU"], "--reporting-currency: currency 'XAU' has no minor unit"),
    (["--as-of", "9999-12-31"], "outside the supported range"),
    (["--fx-rates", "{fx}"], "fx.csv:3: bad FX row: rate '1e400' is implausibly large"),
    (["--fx-rates", "{fx_text}"], "fx_text.csv:2: bad FX row: rate 'one' is not a number"),
])  # fmt: skip
def test_configuration_is_rejected_before_anything_is_written(tmp_path, args, message):
    (tmp_path / "fx.csv").write_text("date,currency,rate\n2024-01-01,EUR,1.1\n2024-01-02,EUR,1e400\n")
    (tmp_path / "fx_text.csv").write_text("date,currency,rate\n2024-01-01,EUR,one\n")
    args = [a.format(fx=tmp_path / "fx.csv", fx_text=tmp_path / "fx_text.csv") for a in args]
    data = tmp_path / "data"
    assert message in one_error_line(cli("run", "--data-dir", str(data), *args))
    assert not data.exists()


def test_a_busy_lake_is_one_line_and_exit_1(tmp_path):
    layout = DataLayout(tmp_path / "data")
    layout.lake.mkdir(parents=True)
    with open(layout.lock_file, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        line = one_error_line(cli("run", "--data-dir", str(layout.root), "--quiet"))
    assert "another run is writing" in line


def test_flag_beats_environment_beats_default(tmp_path):
    empty = tmp_path / "empty"
    # the environment's currency is used (and rejected) when no flag is given
    assert "XAU" in one_error_line(cli("metrics", "--data-dir", str(empty), env={"REVENUE_REPORTING_CURRENCY": "XAU"}))
    # the flag wins: configuration passes, and the empty lake is the (input) error
    line = one_error_line(cli("metrics", "--data-dir", str(empty), "--reporting-currency", "EUR",
                              env={"REVENUE_REPORTING_CURRENCY": "XAU"}))  # fmt: skip
    assert "has no events" in line
    # the data dir itself comes from the environment
    line = one_error_line(cli("metrics", env={"REVENUE_DATA_DIR": str(empty)}))
    assert str(empty) in line


def test_config_is_frozen_and_normalised(tmp_path):
    config = build_config(tmp_path, reporting_currency=" jpy ")
    assert config.reporting_currency == "JPY" and config.reporting_exponent == 0
    assert config.layout.warehouse == (tmp_path / "warehouse" / "revenue.duckdb").absolute()
    with pytest.raises(AttributeError):
        config.reporting_currency = "USD"
    with pytest.raises(ConfigError, match="must not exceed"):
        build_config(tmp_path, thresholds=GateThresholds(0.5, 0.1))
    assert "pii_key" not in repr(config) and "key" not in str(config.describe().get("pii_key_set"))
